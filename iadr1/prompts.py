"""Every prompt text of the method in one place (docs/method.md §3).

Texts are kept byte-for-byte as published where a published number depends on them; where the original had a
flaw (no space between the GRPO preamble and the question) the faithful text is `*_COMPAT` and the default is fixed.
"""

from __future__ import annotations

from typing import Literal

# The benchmark question: the test files' question and the PA-SFT user text (docs/method.md §3).
QUESTION = "Are there any defects in the query image?"

PromptStyle = Literal["iadr1", "baseline", "api", "anomaly_r1"]
PROMPT_STYLES: tuple[str, ...] = ("iadr1", "baseline", "api", "anomaly_r1")

IMAGE_PLACEHOLDER = "<image>"

# --- PA-SFT ----------------------------------------------------------------------------------------------------------
SFT_USER = f"{IMAGE_PLACEHOLDER}\n{QUESTION}"  # == user_text(0)
FEW_SHOT_PREAMBLE = (  # == k_shot_intro(1); one-shot records use user_text(1)
    "Following is 1 image of normal sample, which can be used as a template to compare the image being queried."
)

# --- SC-GRPO ---------------------------------------------------------------------------------------------------------
GRPO_ZERO_SHOT = (
    "You are an expert in detecting defects in image. "
    "Your task is to detect if there are any defects in the test image."
)
GRPO_ONE_SHOT = (
    "You are an expert in detecting defects in image. I will provide you with two images: a reference image (first) "
    "showing a normal object without defects, and a test image (second) that needs inspection. Your task is to compare "
    "these images and determine if there are any anomalies in the test image. Use the reference image as a baseline "
    "for what is considered normal."
)

# Optional system prompt stating the output grammar (off in the published runs).
GRAMMAR_SYSTEM_PROMPT = (
    "First think about the image inside <think></think>. If the image has no defect, then answer "
    "<answer>No</answer>. If it has a defect, then give its location inside <location></location>, its type "
    "inside <type></type>, and answer <answer>Yes</answer>."
)


def grpo_problem(shots: int, compat: bool = False) -> str:
    """The SC-GRPO user text. `compat=True` reproduces the original's missing space before the question."""
    preamble = GRPO_ONE_SHOT if shots else GRPO_ZERO_SHOT
    return preamble + ("" if compat else " ") + QUESTION


# --- inference -------------------------------------------------------------------------------------------------------
BASELINE_SUFFIX = " Please answer by yes or no."
API_SUFFIX = " Directly answer by yes or no."
ANOMALY_R1_SUFFIX = (
    " A. Yes. B. No. Output the thinking process in <think></think> and the final option letter in <answer></answer>."
)


def k_shot_intro(k: int) -> str:
    return (
        f"Following is {k} image of normal sample, which can be used as a template to compare the image being queried."
    )


TEST_INTRO = "Following is image of test sample:"


def question_text(style: PromptStyle = "iadr1") -> str:
    """The question after the images, by prompt style."""
    suffix = {"iadr1": "", "baseline": BASELINE_SUFFIX, "api": API_SUFFIX, "anomaly_r1": ANOMALY_R1_SUFFIX}[style]
    return QUESTION + suffix


# MMAD's multiple-choice questions (`iadr1 infer --task mmad`): the question, its options one per line as MMAD's
# scripts write them ("A. text"), then how to answer. MMAD's own instruction for untagged replies; the tagged
# styles keep their grammar and put the letter in <answer>.
MMAD_LETTER = "Answer with the option's letter from the given choices directly."
MMAD_TAGGED = "Output the thinking process in <think></think> and the final option letter in <answer></answer>."


def mmad_question_text(question: str, options: dict[str, str], style: PromptStyle = "iadr1") -> str:
    """One MMAD question as asked: `Question: ...`, the options, and the answer instruction of `style`."""
    lines = [f"Question: {question}", *(f"{k}. {v}" for k, v in options.items())]
    lines.append(MMAD_TAGGED if style in ("iadr1", "anomaly_r1") else MMAD_LETTER)
    return "\n".join(lines)


def user_text(k: int = 0, style: PromptStyle = "iadr1", question: str | None = None) -> str:
    """The user turn with `<image>` markers: the one text that training records and inference prompts share.

    Zero-shot: `<image>\n{question}` (the PA-SFT format). k-shot: the k-shot intro, k reference images, the
    "test sample" line, the query image, the question, one per line. `question`: another question text (MMAD's,
    `mmad_question_text`) in place of the anomaly-detection question of `style`.
    """
    q = question if question is not None else question_text(style)
    if k <= 0:
        return f"{IMAGE_PLACEHOLDER}\n{q}"
    refs = f"{IMAGE_PLACEHOLDER}\n" * k
    return f"{k_shot_intro(k)}\n{refs}{TEST_INTRO}\n{IMAGE_PLACEHOLDER}\n{q}"


def split_images(text: str) -> list[str | None]:
    """Split a user text at its `<image>` markers into text segments and `None` image slots, in order."""
    out: list[str | None] = []
    for i, piece in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i:
            out.append(None)
        if piece:
            out.append(piece)
    return out


def inference_segments(k: int, style: PromptStyle = "iadr1", question: str | None = None) -> list[str | None]:
    """The user turn of `user_text(k, style, question)` as text segments and `None` image slots (the last is the
    query). Rendered through a chat template this gives exactly the tokens a PA-SFT record with the same text
    trains on."""
    return split_images(user_text(k, style, question))


# --- the teacher of `iadr1 annotate --reasoner model` (docs/annotate.md) --------------------------------------------
TEACHER_SYSTEM = (
    "You write the training answers of an expert industrial inspector. You are told the verified inspection result "
    "of each image; explain it from what you see, as the inspector would, and never contradict it."
)
TEACHER_REFERENCE = "The first image shows a defect-free {cls} for reference."
TEACHER_QUERY = "The image to inspect:"
TEACHER_DEFECT_FACTS = "Verified result: this {cls} is defective."
TEACHER_NORMAL_FACTS = "Verified result: this {cls} is normal; it has no defect."
TEACHER_UNKNOWN_LOCATION = (
    "Where the defect is was not recorded: name the cell of a 3x3 grid of the image it lies in (top left, top, top "
    "right, left, center, right, bottom left, bottom, bottom right)."
)
TEACHER_UNKNOWN_TYPE = "Its type was not recorded: name it with one of these categories: {categories}."
TEACHER_DEFECT_TASK = (
    "Write the reasoning of an expert inspector for this result in a few sentences: what the part is, what the defect "
    "looks like and where it is; do not say that the result was given to you. Then reply in exactly this format and "
    "nothing else: <think>reasoning</think><location>grid cell</location><type>defect type</type>"
    "<answer>Yes</answer>"
)
TEACHER_NORMAL_TASK = (
    "Write the reasoning of an expert inspector for this result in a few sentences: what the part is and why it "
    "looks normal; do not say that the result was given to you. Then reply in exactly this format and nothing else: "
    "<think>reasoning</think><answer>No</answer>"
)
