"""The reward registry: names, user rewards as module:function, weights, and what TRL needs from it."""

from __future__ import annotations

import sys
import textwrap

import pytest

from iadr1.errors import ConfigError
from iadr1.rewards import REWARDS, accuracy_reward, get_reward_funcs, resolve_reward

NO = "<answer>No</answer>"


def test_published_default():
    funcs, weights = get_reward_funcs()
    assert [f.__name__ for f in funcs] == ["accuracy", "consistency"]
    assert weights == [1.0, 1.0]


def test_every_name_resolves_and_is_named_after_itself():
    rs = get_reward_funcs(list(REWARDS), weights=[1, 0.5, 2, 1, 0.25])
    assert rs.names == ["accuracy", "consistency", "accuracy_strict", "consistency_strict", "tag_count"]
    assert rs.weights == [1.0, 0.5, 2.0, 1.0, 0.25]
    for f in rs.funcs:
        assert f(completions=["<think>x</think><answer>No</answer>"], solution=[NO], prompts=["p"]) == [1.0]
    # Wrapping for the name leaves the library function's own name alone.
    assert accuracy_reward.__name__ == "accuracy_reward"
    assert resolve_reward("accuracy").__wrapped__ is accuracy_reward


def test_comma_separated_string():
    assert get_reward_funcs("accuracy_strict, tag_count").names == ["accuracy_strict", "tag_count"]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    code = """
        def length_penalty(completions, **kwargs):
            return [-len(str(c)) / 1000 for c in completions]

        NOT_A_FUNCTION = 3
    """
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_rewards", None)


def test_user_reward_module_function(user_module):
    funcs, weights = get_reward_funcs(["accuracy", "my_rewards:length_penalty"], weights=[1.0, 0.1])
    assert [f.__name__ for f in funcs] == ["accuracy", "my_rewards:length_penalty"]
    assert funcs[1](completions=["abcd"], solution=[NO]) == [-0.004]
    assert weights == [1.0, 0.1]


def test_user_reward_from_a_file(user_module):
    spec = f"{user_module / 'my_rewards.py'}:length_penalty"
    (f,) = get_reward_funcs([spec]).funcs
    assert f.__name__ == spec and f(completions=["ab"]) == [-0.002]


def test_callable_keeps_its_name():
    def my_reward(completions, **kwargs):
        return [0.0] * len(completions)

    assert get_reward_funcs([my_reward, "consistency"]).names == ["my_reward", "consistency"]


@pytest.mark.parametrize(
    "names, weights, message",
    [
        (["accuracy", "nope"], None, r"unknown reward 'nope': use one of accuracy, .*'module:function'"),
        (["no_such_module_xyz:f"], None, r"cannot import module 'no_such_module_xyz'"),
        (["my_rewards:missing"], None, r"module 'my_rewards' has no attribute 'missing'"),
        (["my_rewards:NOT_A_FUNCTION"], None, r"is a int, not a function"),
        (["/no/such/file.py:f"], None, r"file /no/such/file.py not found"),
        (["accuracy", "accuracy"], None, r"'accuracy' is listed twice"),
        (["accuracy", "consistency"], [1.0], r"1 reward weights for 2 reward functions \(accuracy, c"),
        ([], None, r"no reward functions given"),
        ([":f"], None, r"expected 'module:function'"),
    ],
)
def test_errors_name_the_problem(user_module, names, weights, message):
    with pytest.raises(ConfigError, match=message):
        get_reward_funcs(names, weights)


def test_called_as_trl_calls_them():
    """TRL logs each reward under `reward_func.__name__` and calls it with keywords, every column included."""
    funcs, weights = get_reward_funcs(["accuracy", "consistency"])
    prompts = [[{"role": "user", "content": "q"}]]
    kwargs = {"prompts": prompts, "completion_ids": [[1, 2]], "trainer_state": None, "image": ["a.png"]}
    completions = [[{"role": "assistant", "content": NO}]]
    out = [f(completions=completions, solution=[NO], **kwargs) for f in funcs]
    assert out == [[1.0], [0.0]]
