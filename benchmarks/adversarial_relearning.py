"""A diagnostic, not an option: unlearning against a simulated relearning attacker, on the CPU demo.

Each training step first takes the gradient of the forget text's language-modelling loss with respect to the base
weights under every LoRA layer, then computes the step's student loss with each of those weights moved against
that gradient by ``rho`` times its own norm (the direction a relearning attack takes the model), so that the
student learns to give the generic targets even from a base nudged back towards the text. The targets and the
retain loss are computed from the unmoved base. Results in docs/results.md (relearning); not kept in the package.

    python benchmarks/adversarial_relearning.py --rho 0.05 --seed 42 --output_dir /tmp/rr/d42_0.05
    python benchmarks/goal_row.py /tmp/rr/d42_0.05/evaluation-auto/report.json
"""

from __future__ import annotations

import argparse

import torch
from peft.tuners.lora import LoraLayer

import whp_trainer.trainer as trainer_module
from whp_trainer.arguments import DemoArguments
from whp_trainer.targets import IGNORE_INDEX
from whp_trainer.demo.run import run_demo

plain_forward = trainer_module.student_forward
plain_training_step = trainer_module.UnlearnTrainer.training_step


def attacker_moves(model, inputs, rho: float) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """(LoRA layer, the move of its base weight towards the forget text: ``-rho·‖W‖·g/‖g‖``) for every LoRA layer."""
    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    weights = [layer.base_layer.weight for layer in layers]
    for weight in weights:
        weight.requires_grad_(True)
    try:
        logits = plain_forward(model, inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), inputs["shift_labels"].flatten(),
                                                 ignore_index=IGNORE_INDEX)
        gradients = torch.autograd.grad(loss, weights)
    finally:
        for weight in weights:
            weight.requires_grad_(False)
    return [(layer, (-rho * weight.norm() * gradient / (gradient.norm() + 1e-12)).detach())
            for layer, weight, gradient in zip(layers, weights, gradients)]


def with_attacker(rho: float) -> None:
    """Patch the trainer: the student's forward of each step runs on the moved base weights."""
    moves: list = []

    def student_forward(model, inputs):
        handles = [layer.register_forward_hook(lambda _, args, out, move=move: out + torch.nn.functional.linear(
            args[0], move)) for layer, move in moves]
        try:
            return plain_forward(model, inputs)
        finally:
            for handle in handles:
                handle.remove()

    def training_step(self, model, inputs, num_items_in_batch=None):
        moves[:] = attacker_moves(model, self._prepare_inputs(inputs), rho)
        try:
            return plain_training_step(self, model, inputs, num_items_in_batch)
        finally:
            moves.clear()

    trainer_module.student_forward = student_forward
    trainer_module.UnlearnTrainer.training_step = training_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rho", type=float, required=True, help="the move of each base weight, times its norm")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    with_attacker(args.rho)
    run_demo(DemoArguments(method="auto", seed=args.seed, output_dir=args.output_dir))


if __name__ == "__main__":
    main()
