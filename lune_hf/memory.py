"""Peak memory of one `LuneTrainer` training step at any model size, from the model's config alone.

The step is the trainer's own (`LuneTrainer.compute_loss` with its collator, answer-only logits and adapter-off
reference, backward, AdamW on the adapter), run on *fake* tensors (`torch._subclasses.FakeTensorMode`): shapes,
dtypes and storages are tracked, nothing is allocated and no arithmetic is done, so an 8B step is estimated on a
laptop in seconds. `torch.distributed._tools.mem_tracker.MemTracker` follows every storage's life and reports the
peak by category (parameters, gradients, optimizer states, activations, temporaries).

Baselines in the same accounting: full fine-tuning (bf16 weights and gradients, fp32 master weights and AdamW
states, the usual mixed-precision setup) and full NPO with a second frozen bf16 model as the reference.

The same code also runs on real CPU tensors (``real=True``) and then reads the peak from the CPU allocator's
own events (the profiler), without the scratch an operator's CPU kernel allocates and frees inside its own call:
that is how the estimate is validated at small sizes.

What is not modelled: the CUDA context and allocator fragmentation (`MemoryEstimate.fits` leaves headroom for
them), kernels' workspaces, and attention kernels that keep less than the eager/SDPA-math path traced here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

GIB = 1024**3
METHODS = ("lora", "full", "full_reference")
Method = Literal["lora", "full", "full_reference"]


@dataclass(frozen=True)
class StepShape:
    """What one training step holds: batch, lengths, objective, and the memory settings."""

    method: Method = "lora"
    objective: str = "lune"
    retain: bool = True
    batch_size: int = 8
    max_length: int = 512
    answer_tokens: int | None = None  # the rest of each row is prompt; None: half of max_length
    activation_checkpointing: bool = True
    lora_dropout: float = 0.05  # LuneConfig.lora_dropout
    lora_r: int = 16
    dtype: str = "bfloat16"
    teacher: bool = False  # lune + `negative_loss='distill'`: a second frozen copy of the model as the teacher

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if self.teacher and (self.method != "lora" or self.objective != "lune"):
            raise ValueError(f"teacher=True is LUNE's distillation term (method='lora', objective='lune'); got "
                             f"method={self.method!r}, objective={self.objective!r}.")
        if self.answer_tokens is None:
            object.__setattr__(self, "answer_tokens", self.max_length // 2)
        if not 1 <= self.answer_tokens < self.max_length:
            raise ValueError(f"answer_tokens must be in [1, max_length), got {self.answer_tokens}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}.")


@dataclass
class MemoryEstimate:
    """Peak bytes of one step and where they go (the tracker's categories at the moment of the peak)."""

    shape: StepShape
    peak_bytes: int
    breakdown: dict[str, int]
    parameters: dict[str, int]
    real: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / GIB

    def fits(self, gpu_gib: float, headroom_gib: float = 1.0) -> bool:
        """Whether the step fits a GPU of `gpu_gib`, keeping `headroom_gib` for the CUDA context and fragmentation."""
        return self.peak_bytes + headroom_gib * GIB <= gpu_gib * GIB

    def as_dict(self) -> dict[str, Any]:
        return {"shape": asdict(self.shape), "peak_bytes": self.peak_bytes, "peak_gib": round(self.peak_gib, 3),
                "breakdown": self.breakdown, "parameters": self.parameters, "real": self.real, **self.extra}


# ------------------------------------------------------------------------------------------------
# Tracking
# ------------------------------------------------------------------------------------------------


def _tracker_class():
    from torch.distributed._tools import mem_tracker as mt

    class StepTracker(mt.MemTracker):
        """`MemTracker` for a step with frozen weights and several forwards of one model.

        The stock tracker hooks every parameter (a frozen one refuses a hook), refuses a second forward of the
        root module (the trainer runs forget, retain and reference forwards) and snapshots every module's peak
        at every op (slow, and only the global peak is needed here)."""

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            def grad_hook(grad):
                self._update_and_maybe_create_winfos(grad, mt._MemRefType.GRAD)

            param_bytes = buffer_bytes = 0
            for p in module.parameters():
                infos = self._update_and_maybe_create_winfos(p, mt._MemRefType.PARAM)
                param_bytes += sum(w.mem_consumed for w in infos)
                if p.grad is not None:
                    self._update_and_maybe_create_winfos(p.grad, mt._MemRefType.GRAD)
                if install_grad_hooks and p.requires_grad and self._param_to_grad_hook_handles.get(p) is None:
                    self._param_to_grad_hook_handles[p] = (
                        p.register_hook(grad_hook),
                        p.register_post_accumulate_grad_hook(lambda q: grad_hook(q.grad)),
                    )
            for b in module.buffers():
                buffer_bytes += sum(
                    w.mem_consumed for w in self._update_and_maybe_create_winfos(b, mt._MemRefType.BUFFER))
            return param_bytes, buffer_bytes

        def _pre_fw_hook(self, module, inputs):
            if module in self.memory_tracking and not self._mod_tracker.is_bw:
                parents = set(self._mod_tracker.parents) - {self._mod_tracker.get_known_fqn(module)}
                if parents == {"Global"}:  # the same model called again within the step
                    del self.memory_tracking[module]
            super()._pre_fw_hook(module, inputs)

        def _update_peak_stats(self, peak_state):
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap["Total"]:
                    self._peak_mem[dev] = snap["Total"]
                    self._peak_mem_snap[dev] = dict(snap)

        def tag_grad(self, tensor: torch.Tensor) -> None:
            self._update_and_maybe_create_winfos(tensor, mt._MemRefType.GRAD)

    return StepTracker


@contextlib.contextmanager
def _gpu_accounting(fake: bool) -> Iterator[None]:
    """Fake runs count bytes as the CUDA caching allocator does (blocks of 512 B); transformers is told the
    batch is not packed (it takes fake tensors for tracing and would otherwise build a full attention mask)."""
    import transformers.masking_utils as masking
    from torch.distributed._tools import mem_tracker as mt

    saved = mt._WeakRefInfo._calculate_mem_consumed, masking.find_packed_sequence_indices

    def consumed(self) -> int:
        size = self.size * self.element_size
        return math.ceil(size / 512) * 512 if fake else size

    mt._WeakRefInfo._calculate_mem_consumed = consumed
    masking.find_packed_sequence_indices = lambda position_ids: None
    try:
        yield
    finally:
        mt._WeakRefInfo._calculate_mem_consumed, masking.find_packed_sequence_indices = saved


def _to_fake(root: torch.nn.Module, mode) -> None:
    """Swap meta parameters and buffers for fake CPU tensors (ties kept; `Module.to` cannot swap fake ones)."""
    memo: dict[int, torch.Tensor] = {}

    def convert(t: torch.Tensor, param: bool) -> torch.Tensor:
        if id(t) not in memo:
            with mode:
                fake = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cpu")
            memo[id(t)] = torch.nn.Parameter(fake, requires_grad=t.requires_grad) if param else fake
        return memo[id(t)]

    for module in root.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = convert(p, True)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = convert(b, False)


def _build(config, dtype: torch.dtype, fake_mode, device: str = "cpu") -> torch.nn.Module:
    """The architecture of `config` with random (real, on `device`) or fake weights, in `dtype`."""
    from transformers import AutoModelForCausalLM

    config = config.__class__.from_dict(config.to_dict())
    config.use_cache = False
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    if fake_mode is None:
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype)


def format_bytes(n: int) -> str:
    """`17.08 GiB`, `812.4 MiB`."""
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def _enable_checkpointing(model, kwargs: dict | None) -> None:
    """What `Trainer` does at the start of `train()` when activation checkpointing is on."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _cpu_allocator_peak(run: Callable[[], None]) -> tuple[int, int]:
    """Peak of the CPU allocator's live bytes during `run`, above what was live when it started, without kernel
    scratch; and the peak with it.

    Scratch is what one operator allocates and frees inside its own dispatch, below the tracker's dispatch mode (a
    CPU BLAS kernel's contiguous copies of strided inputs, a workspace): no tensor of the step holds it, its size
    depends on the CPU's kernels, and the estimate leaves kernels' workspaces out (the module's docstring).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events: list[tuple[int, int, int, int | None]] = []  # time, bytes (+ allocated, - freed), pointer, scope end

    def walk(nodes, scope_end: int | None) -> None:
        for node in nodes:
            if str(node.tag).endswith("Allocation"):
                events.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.ptr, scope_end))
            walk(node.children, node.end_time_ns if node.name == "PythonDispatchMode" else scope_end)

    walk(prof.profiler.kineto_results.experimental_event_tree(), None)
    events.sort(key=lambda e: e[0])
    scratch: set[int] = set()  # indices of scratch allocations and of their frees
    open_at: dict[int, int] = {}  # pointer -> index of its live allocation
    for i, (time, size, ptr, _) in enumerate(events):
        if size > 0:
            open_at[ptr] = i
        elif ptr in open_at:
            j = open_at.pop(ptr)
            scope_end = events[j][3]
            if scope_end is not None and time <= scope_end:
                scratch |= {i, j}
    live = live_all = peak = peak_all = 0
    for i, (_, size, _, _) in enumerate(events):
        live_all += size
        peak_all = max(peak_all, live_all)
        if i not in scratch:
            live += size
            peak = max(peak, live)
    return peak, peak_all


def _live_bytes(tensors) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


# ------------------------------------------------------------------------------------------------
# The steps
# ------------------------------------------------------------------------------------------------


def _features(shape: StepShape, spec, vocab_size: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """Rows as the trainer's tokeniser produces them: a prompt, then an answer of `answer_tokens` tokens."""
    from .data import FORGET_PREFIX, REPLACEMENT_PREFIX, RETAIN_PREFIX
    from .objectives import IGNORE_INDEX

    gen = torch.Generator().manual_seed(seed)
    prompt = shape.max_length - shape.answer_tokens
    groups = [p for p, used in ((FORGET_PREFIX, spec.uses_answer), (REPLACEMENT_PREFIX, spec.uses_replacement),
                                (RETAIN_PREFIX, shape.retain)) if used]
    rows = []
    for _ in range(shape.batch_size):
        row = {}
        for prefix in groups:
            ids = torch.randint(1, vocab_size, (shape.max_length,), generator=gen).tolist()
            row[f"{prefix}_input_ids"] = ids
            row[f"{prefix}_labels"] = [IGNORE_INDEX] * prompt + ids[prompt:]
        rows.append(row)
    return rows


def _all_answer_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`objectives.token_logprobs` for batches whose every shifted label is an answer token (no value reads)."""
    logits, labels = logits[:, :-1, :], labels[:, 1:]
    mask = labels != -100
    flat = logits.reshape(-1, logits.shape[-1]).float()
    out = flat.log_softmax(-1).gather(-1, labels.reshape(-1, 1)).reshape(mask.shape)
    return out, mask


def _all_answer_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`objectives.kl_divergence` for the same batches (every shifted label an answer token, no value reads)."""
    from .objectives import token_kl

    vocab = logits.shape[-1]
    return token_kl(logits[:, :-1, :].reshape(-1, vocab).float(),
                    ref_logits[:, :-1, :].reshape(-1, vocab).float()).mean()


def _placeholder_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>")),
                                   pad_token="<pad>", unk_token="<unk>")


def _estimate_args(shape: StepShape, output_dir: str):
    """The run's `LuneConfig` for `shape`, telling the trainer not to move the model (fake weights cannot move)."""
    from .config import CHECKPOINTING, LuneConfig

    @dataclass
    class EstimateConfig(LuneConfig):
        @property
        def place_model_on_device(self) -> bool:
            return False

    distill = {"negative_weight": 1.0, "negative_loss": "distill"} if shape.teacher else {}
    return EstimateConfig(output_dir=output_dir, objective=shape.objective, use_cpu=True, report_to=[], **distill,
                          **{CHECKPOINTING: shape.activation_checkpointing}, lora_dropout=shape.lora_dropout,
                          lora_r=shape.lora_r, lora_alpha=shape.lora_r, per_device_train_batch_size=shape.batch_size,
                          max_length=shape.max_length, disable_tqdm=True)


def _lora_trainer(model, args, retain: bool, teacher=None):
    """A real `LuneTrainer` around the adapted `model` (its placeholder rows are never trained on)."""
    from datasets import Dataset

    from .trainer import LuneTrainer

    rows = Dataset.from_list([{"input_ids": [1, 1], "labels": [-100, 1]}])
    return LuneTrainer(model, args, train_dataset=rows, retain_dataset=rows if retain else None,
                       processing_class=_placeholder_tokenizer(), teacher_model=teacher)


class _Step:
    """One training step, prepared to be measured: the model(s), the optimizer with its states, the batch.

    `lora`: a real `LuneTrainer` around a peft model, its collator's batch and its `compute_loss`. `full` /
    `full_reference`: bf16 weights with fp32 master copies and AdamW, NLL (or NPO against a second model) over every
    position, as full fine-tuning runs. With `shape.teacher`, the `lora` step also holds a frozen copy of the model
    as the distillation teacher, run without gradients on the original answers.
    """

    def __init__(self, config, shape: StepShape, mode, device: str, workdir: str) -> None:
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        from . import logits as logits_module
        from .config import CHECKPOINTING

        self.shape, self.mode, self.device = shape, mode, device
        # `frozen`: the second, gradient-free model (NPO's reference, or the distillation teacher), or None
        self.model, self.frozen, self.trainer = self._models(config, shape, mode, device, workdir)
        self.model.train()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.windows: dict[int, int] = {}  # answer windows (data-dependent): from the real labels, by fake tensor
        self.master: list[torch.Tensor] = []
        inside = mode if mode is not None else contextlib.nullcontext()
        with inside:
            if self.trainer is not None:
                if shape.activation_checkpointing:
                    _enable_checkpointing(self.model, getattr(self.trainer.args, f"{CHECKPOINTING}_kwargs"))
                with unset_fake_temporarily():
                    features = _features(shape, self.trainer.args.spec, config.vocab_size)
                    real_batch = {k: v.to(device) for k, v in self.trainer.data_collator(features).items()}
                self.inputs = {k: mode.from_tensor(v) for k, v in real_batch.items()} if mode else real_batch
                for key, value in self.inputs.items():
                    if key.endswith("_labels"):
                        with unset_fake_temporarily():
                            self.windows[id(value)] = logits_module.answer_window(real_batch[key])
                self.optimizer = self.trainer.create_optimizer()
            else:
                if shape.activation_checkpointing:
                    _enable_checkpointing(self.model, {"use_reentrant": False})
                self.master = [p.detach().float() for p in self.trainable]  # fp32 master weights
                self.optimizer = torch.optim.AdamW(self.master, lr=1e-5, foreach=True)
                ids = torch.randint(1, config.vocab_size, (shape.batch_size, shape.max_length), device=device)
                self.inputs = {"input_ids": ids}
            # Steady state: AdamW creates its states at the first step and keeps them, so every later step peaks
            # with them live. One step on zero gradients creates them before the measured step.
            for group in self.optimizer.param_groups:
                for p in group["params"]:
                    p.grad = torch.zeros_like(p)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    @staticmethod
    def _models(config, shape: StepShape, mode, device: str, workdir: str):
        from .trainer import attach_adapter

        dtype = getattr(torch, shape.dtype)
        model, frozen, trainer = _build(config, dtype, mode, device), None, None
        if shape.method == "full_reference" or shape.teacher:  # NPO's reference, or the distillation teacher
            frozen = _build(config, dtype, mode, device).requires_grad_(False)
        if shape.method == "lora":
            args = _estimate_args(shape, workdir)
            with torch.device("meta") if mode is not None else contextlib.nullcontext():
                model = attach_adapter(model, args)
            for name, module in model.named_modules():  # peft skips its fp32 adapter cast on the meta device
                if name.endswith(("lora_A.default", "lora_B.default")):
                    module.to(torch.float32)
        if mode is not None:
            for module in (model, frozen):
                if module is not None:
                    _to_fake(module, mode)
        if shape.method == "lora":
            trainer = _lora_trainer(model, args, shape.retain, frozen)
        return model, frozen, trainer

    def parameters(self) -> dict[str, int]:
        return {"total": sum(p.numel() for p in self.model.parameters()),
                "trainable": sum(p.numel() for p in self.trainable),
                **{"teacher" if self.shape.teacher else "reference":
                   sum(p.numel() for p in self.frozen.parameters()) if self.frozen else 0}}

    def held(self) -> list:
        """What lives across steps (weights, master copies, optimizer states) and the batch."""
        states = [t for state in self.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
        weights = [*self.model.parameters(), *self.model.buffers()]
        weights += list(self.frozen.parameters()) if self.frozen is not None else []
        return [*weights, *self.master, *states]

    def run(self, mark: Callable[[str], None], tag_grad: Callable[[torch.Tensor], None]) -> None:
        if self.trainer is not None:
            loss = self.trainer.compute_loss(self.model, self.inputs)
        else:
            loss = self._full_loss(mark)
        mark("forward")
        loss.backward()
        mark("backward")
        masters = list(zip(self.master, self.trainable, strict=True)) if self.master else []
        for m, p in masters:  # full fine-tuning: gradients to the fp32 master copies
            m.grad = p.grad.float()
            p.grad = None
            tag_grad(m.grad)
        self.optimizer.step()
        with torch.no_grad():
            for m, p in masters:
                p.copy_(m)
        mark("optimizer")
        self.optimizer.zero_grad(set_to_none=True)

    def _full_loss(self, mark: Callable[[str], None]) -> torch.Tensor:
        from .objectives import npo, sequence_nll

        ids = self.inputs["input_ids"]

        def nll(m) -> torch.Tensor:
            return sequence_nll(m(input_ids=ids, use_cache=False).logits[:, :-1], ids[:, 1:])[0]

        if self.frozen is None:
            return nll(self.model).mean()
        with torch.no_grad():
            ref_nll = nll(self.frozen)
        mark("reference")
        return npo(nll(self.model), ref_nll, 0.1)

    @contextlib.contextmanager
    def stand_ins(self) -> Iterator[None]:
        """Stand-ins for what a fake tensor cannot do: read values (the answer window, boolean selections of answer
        positions; every position of these synthetic answers is an answer position, so a selection is a reshape of
        the same size). The trainer's finiteness check (a host read and a host copy of the adapter) is left out of
        real runs too: it holds no device memory."""
        from . import logits as logits_module
        from . import objectives

        saved = objectives.token_logprobs, objectives.kl_divergence, logits_module.answer_window
        if self.mode is not None:
            objectives.token_logprobs, objectives.kl_divergence = _all_answer_logprobs, _all_answer_kl
            logits_module.answer_window = lambda labels: self.windows[id(labels)]
        if self.trainer is not None:
            self.trainer._guard_finite = lambda model, loss: None
        try:
            yield
        finally:
            objectives.token_logprobs, objectives.kl_divergence, logits_module.answer_window = saved


def estimate_step_memory(config, shape: StepShape | None = None, *, real: bool = False,
                         device: str = "cpu") -> MemoryEstimate:
    """Peak memory of one training step of `config`'s architecture (a `PretrainedConfig`).

    Args:
        config: the model's config (`AutoConfig.from_pretrained(id)`); no weights are read.
        shape: batch, lengths, objective and memory settings (default: `StepShape()`, LuneTrainer's defaults).
        real: False (default): fake tensors, any size, bytes counted as a CUDA device does. True: random real
            weights on `device`, the peak read from its allocator (the CPU allocator's profiler events, or
            `torch.cuda.max_memory_allocated`): the validation of the estimate, for small models.

    Example:
        >>> from transformers import AutoConfig
        >>> estimate = estimate_step_memory(AutoConfig.from_pretrained("meta-llama/Llama-3.1-8B"))  # doctest: +SKIP
        >>> estimate.fits(24)  # doctest: +SKIP
        True
    """
    import tempfile

    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

    from .objectives import OBJECTIVES

    shape = shape or StepShape()
    if shape.objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {shape.objective!r}. Valid objectives: {', '.join(OBJECTIVES)}.")
    mode = None if real else FakeTensorMode()
    tracker = _tracker_class()()
    phases: dict[str, int] = {}

    def mark(name: str) -> None:
        phases[name] = tracker.get_tracker_snapshot("peak").get(torch.device("cpu"), {}).get("Total", 0)

    with _gpu_accounting(fake=not real), tempfile.TemporaryDirectory() as workdir:
        step = _Step(config, shape, mode, device, workdir)
        with mode if mode is not None else contextlib.nullcontext():
            tracker.track_external(step.model, step.optimizer, *step.held(), *step.inputs.values())
            held = _live_bytes(step.held()) if real else 0

            def run() -> None:
                with tracker, step.stand_ins():
                    step.run(mark, tracker.tag_grad)

            allocator = with_scratch = None
            if real and device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                run()
                torch.cuda.synchronize()
                allocator = torch.cuda.max_memory_allocated()  # everything live, like the estimate
            elif real:
                with unset_fake_temporarily():
                    allocator, with_scratch = _cpu_allocator_peak(run)
                    allocator, with_scratch = allocator + held, with_scratch + held
            else:
                run()
    categories = tracker.get_tracker_snapshot("peak").get(torch.device("cpu"), {})
    breakdown = {str(getattr(k, "value", k)): int(v) for k, v in categories.items() if str(k) != "Total"}
    peak = int(categories.get("Total", 0))
    extra: dict[str, Any] = {"phases": phases}
    if allocator is not None:
        extra |= {"allocator_peak_bytes": int(allocator), "tracker_peak_bytes": peak}
        if with_scratch is not None:
            extra["allocator_peak_with_kernel_scratch_bytes"] = int(with_scratch)
        peak = int(allocator)
    return MemoryEstimate(shape=shape, peak_bytes=peak, breakdown=breakdown, parameters=step.parameters(), real=real,
                          extra=extra)
