"""What PEFT's ``merge_and_unload()`` keeps of an adapter merged into a 4-bit base.

Loads ``--base`` in 4-bit NF4 (bitsandbytes, blocks of 64, as ``load_in_4bit`` does), puts ``--adapter`` on it,
merges with PEFT (which dequantizes each layer, adds the adapter's change and quantizes the sum again) and prints
the share of the base's 4-bit codes the merged model still holds, and the blocks whose scale moved. An unlearning
adapter trained on that 4-bit base (QLoRA) changes the weights by less than half a step of the grid: every code may
come back, and with it the base.

    python benchmarks/qlora_merge.py --base /tmp/real/cache/real_model/v1/base --adapter /tmp/real/q0/auto
"""

from __future__ import annotations

import argparse


def packed_codes(weight) -> list:
    """The two 4-bit codes of each byte of a packed bitsandbytes weight."""
    return [(weight >> 4) & 15, weight & 15]


def main(argv: list[str] | None = None) -> dict:
    import bitsandbytes as bnb
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="The full-precision base's folder (or Hub id).")
    parser.add_argument("--adapter", required=True, help="A LoRA adapter trained on that base in 4-bit NF4.")
    args = parser.parse_args(argv)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(args.base, quantization_config=config)
    layers = {name: module for name, module in base.named_modules() if isinstance(module, bnb.nn.Linear4bit)}
    before = {name: (layer.weight.data.clone(), layer.weight.quant_state.absmax.clone())
              for name, layer in layers.items()}
    merged = PeftModel.from_pretrained(base, args.adapter).merge_and_unload()
    same = codes = blocks = moved = 0
    for name, layer in merged.named_modules():
        if name in before:
            weight, absmax = before[name]
            for new, old in zip(packed_codes(layer.weight.data), packed_codes(weight)):
                same += (new == old).sum().item()
                codes += new.numel()
            moved += (layer.weight.quant_state.absmax != absmax).sum().item()
            blocks += absmax.numel()
    result = {"codes_unchanged": same / codes, "weights": codes, "blocks_rescaled": moved / blocks}
    print(f"qlora_merge: {same:,} of {codes:,} 4-bit codes unchanged by the merge ({same / codes:.4%}); the scale "
          f"moved in {moved / blocks:.1%} of {blocks:,} blocks")
    return result


if __name__ == "__main__":
    main()
