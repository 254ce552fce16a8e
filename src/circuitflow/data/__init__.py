"""Text in: the corpus split into token windows (rule prepare_dataset) and attribution prompts."""

from circuitflow.data.dataset import DatasetError, prepare_dataset, read_windows, usable_positions
from circuitflow.data.prompts import Prompt, PromptError, discover_prompts, read_prompt_text, tokenize_prompt

__all__ = ["DatasetError", "Prompt", "PromptError", "discover_prompts", "prepare_dataset", "read_prompt_text",
           "read_windows", "tokenize_prompt", "usable_positions"]
