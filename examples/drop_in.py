"""Turn an existing Trainer script into an unlearning run: the lines marked "whp" are all that change.

    python examples/drop_in.py --model meta-llama/Llama-2-7b-chat-hf --forget books/ \
        --reinforced out/reinforced --anchors anchors.yaml --output out/unlearned --load_in_4bit

The forget target is a folder of .txt files (a file is one document, cut into blocks of running text);
--reinforced is the output of `whp reinforce` (or examples/harry_potter.yaml's reinforce stage) on the same base.
"""

import argparse

import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from whp_trainer import UnlearnConfig, UnlearnTrainer  # whp: instead of Trainer, TrainingArguments
from whp_trainer.collator import split_into_blocks
from whp_trainer.data import load_texts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="meta-llama/Llama-2-7b-chat-hf")
    parser.add_argument("--forget", required=True, help="folder of .txt files, .txt, or .jsonl with a text column")
    parser.add_argument("--reinforced", required=True, help="the reinforced adapter (stage 1)")
    parser.add_argument("--anchors", required=True, help="the anchor dictionary (.yaml/.json/.csv)")
    parser.add_argument("--output", default="out/unlearned")
    parser.add_argument("--load_in_4bit", action="store_true")
    parser.add_argument("--max_steps", type=int, default=150)
    args = parser.parse_args(argv)

    # --8<-- [start:drop-in]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16) if args.load_in_4bit else None
    model = AutoModelForCausalLM.from_pretrained(args.model, quantization_config=quantization)
    blocks = split_into_blocks(load_texts(args.forget), tokenizer, block_size=512)

    trainer = UnlearnTrainer(  # whp: was Trainer(model=model, args=TrainingArguments(...), ...)
        model=model,
        reinforced_adapter=args.reinforced,  # whp: the frozen teacher adapter, on the same base
        anchors=args.anchors,  # whp: the anchored-terms dictionary
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        args=UnlearnConfig(  # whp: a TrainingArguments with the method's fields
            output_dir=args.output,
            alpha=5.0,
            max_length=512,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=16,
            max_steps=args.max_steps,
            learning_rate=1e-4,
            logging_steps=10,
            save_steps=50,
        ),
        train_dataset=blocks,
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model()  # the unlearning adapter alone (never the reinforced one) and a model card
    # --8<-- [end:drop-in]
    return trainer


if __name__ == "__main__":
    main()
