"""iadr1: post-train vision-language models for industrial anomaly detection (IAD-R1)."""

__version__ = "0.1.0"
