"""Watch the student forget while it trains, then compare base, reinforced and unlearned, and write the report.

    python examples/evaluate_callback.py --model meta-llama/Llama-2-7b-chat-hf --forget books/ --retain retain/ \
        --reinforced out/reinforced --anchors anchors.yaml --probes probes.jsonl --output out/unlearned

The familiarity, the retain perplexity and the probability of the chosen next tokens are logged every
--every_n_steps steps (TensorBoard, W&B and trainer.state.log_history show them as eval/...); after training the
three roles of the same model are measured and the report goes to --report, its results onto the model card.
"""

import argparse

from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from whp_trainer import UnlearnConfig, UnlearnTrainer
from whp_trainer.collator import split_into_blocks
from whp_trainer.evaluation import EvaluateConfig, FamiliarityCallback, evaluate_model, write_report
from whp_trainer.evaluation.probes import load_probes
from whp_trainer.data import load_texts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="meta-llama/Llama-2-7b-chat-hf")
    parser.add_argument("--forget", required=True, help="folder of .txt files, .txt, or .jsonl with a text column")
    parser.add_argument("--retain", required=True, help="ordinary text the model must keep")
    parser.add_argument("--reinforced", required=True, help="the reinforced adapter (stage 1)")
    parser.add_argument("--anchors", required=True, help="the anchor dictionary (.yaml/.json/.csv)")
    parser.add_argument("--probes", required=True, help="familiarity probes (.json/.jsonl of {prompt, target})")
    parser.add_argument("--output", default="out/unlearned")
    parser.add_argument("--report", default="out/evaluation")
    parser.add_argument("--max_steps", type=int, default=150)
    parser.add_argument("--every_n_steps", type=int, default=10)
    args = parser.parse_args(argv)

    # --8<-- [start:callback]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    forget = load_texts(args.forget)
    retain = load_texts(args.retain)["text"][:200]
    probes = load_probes(args.probes)

    trainer = UnlearnTrainer(
        model=AutoModelForCausalLM.from_pretrained(args.model),
        reinforced_adapter=args.reinforced,
        anchors=args.anchors,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"),
        args=UnlearnConfig(output_dir=args.output, max_steps=args.max_steps, logging_steps=10, max_length=512),
        train_dataset=split_into_blocks(forget, tokenizer, block_size=512),
        processing_class=tokenizer,
    )
    familiarity = FamiliarityCallback(
        trainer,
        probes,
        retain_texts=retain,
        next_token_prompts={"Harry Potter studies": [" magic", " the"]},  # the paper's Figure
        every_n_steps=args.every_n_steps,
    )
    trainer.add_callback(familiarity)  # measures at step 0, every N steps and at the end
    trainer.train()
    # --8<-- [end:callback]

    # --8<-- [start:report]
    config = EvaluateConfig(output_dir=args.report, completions=100, relearn_steps=10)
    results = evaluate_model(  # the trained model holds all three roles: no reload
        trainer.model,
        tokenizer,
        config,
        probes,
        forget["text"],
        retain,
        dictionary=trainer.anchors,
        roles={"base": None, "reinforced": trainer.args.reinforced_adapter_name,
               "unlearned": trainer.args.unlearn_adapter_name},
    )
    write_report(results, config.output_dir, history=familiarity.history, config=config)
    trainer.eval_results = results  # the model card's evaluation table and model-index
    trainer.save_model()
    # --8<-- [end:report]
    return trainer, familiarity, results


if __name__ == "__main__":
    main()
