"""Training: PA-SFT (`sft.run_sft`) and SC-GRPO (`grpo.run_grpo`) over TRL, LoRA merging (`merge`), configs
and recipes (`config`), records -> datasets (`data`). Heavy libraries are imported inside the functions."""
