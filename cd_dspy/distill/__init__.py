"""Knowledge distillation into weights with a primed teacher (arXiv 2412.17846), next to CD's rules.

    data.py      the primed teacher's accepted traces -> chat JSONL (DSPy's BootstrapFinetune format) + sidecar
    logprobs.py  the teacher's top-k log-probabilities on the reply's exact tokens (llama.cpp), for white-box KD
    validate.py  line-by-line checks of the JSONL and its sidecar
    train.py     LoRA (peft) SFT or KD on a Hugging Face causal LM; student.py loads the local GGUF into it
    convert.py   adapter -> llama.cpp LoRA GGUF (or a merged model -> GGUF) with llama.cpp's own scripts
    pipeline.py  the whole path, as `cd-dspy distill` and examples/distill_compare.py run it
    provider.py  a DSPy fine-tuning provider: dspy.BootstrapFinetune trains and serves these LoRA adapters

Training needs the `distill` extra (torch, transformers, peft); data generation and validation do not.
"""

from cd_dspy.distill.convert import ConversionUnavailableError, convert_hf, convert_lora, scripts_dir
from cd_dspy.distill.data import (
    DistillData,
    DistillRecord,
    generate_distillation_data,
    meta_path,
    read_jsonl,
    with_student_view,
    write_jsonl,
)
from cd_dspy.distill.logprobs import AlignmentError, LlamaScorer, TokenLogprobs, add_teacher_logprobs
from cd_dspy.distill.provider import LocalLoraProvider, finetunable_lm
from cd_dspy.distill.student import gguf_tokenizer, load_student, merge_adapter
from cd_dspy.distill.train import LoraSettings, LoraTrainer, TrainReport, TrainSettings
from cd_dspy.distill.validate import DistillDataError, validate_jsonl

__all__ = [
    "AlignmentError",
    "ConversionUnavailableError",
    "DistillData",
    "DistillDataError",
    "DistillRecord",
    "LlamaScorer",
    "LocalLoraProvider",
    "LoraSettings",
    "LoraTrainer",
    "TokenLogprobs",
    "TrainReport",
    "TrainSettings",
    "add_teacher_logprobs",
    "convert_hf",
    "convert_lora",
    "finetunable_lm",
    "generate_distillation_data",
    "gguf_tokenizer",
    "load_student",
    "merge_adapter",
    "meta_path",
    "read_jsonl",
    "scripts_dir",
    "validate_jsonl",
    "with_student_view",
    "write_jsonl",
]
