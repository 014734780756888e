"""Peak memory of one `LuneTrainer` training step at any model size, from the model's config alone.

The step is the trainer's own (`LuneTrainer.compute_loss` with its collator, answer-only logits and adapter-off
reference, backward, AdamW on the adapter), run on *fake* tensors (`torch._subclasses.FakeTensorMode`): shapes,
dtypes and storages are tracked, nothing is allocated and no arithmetic is done, so an 8B step is estimated on a
laptop in seconds. `torch.distributed._tools.mem_tracker.MemTracker` follows every storage's life and reports the
peak by category (parameters, gradients, optimizer states, activations, temporaries).

Baselines in the same accounting: full fine-tuning (bf16 weights and gradients, fp32 master weights and AdamW
states, the usual mixed-precision setup) and full NPO with a second frozen bf16 model as the reference.

The same code also runs on real CPU tensors (``real=True``) and then reads the peak from the CPU allocator's
own events (the profiler): that is how the estimate is validated at small sizes.

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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}.")
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


def _cpu_allocator_peak(run: Callable[[], None]) -> int:
    """Peak of the CPU allocator's live bytes during `run`, above what was live when it started."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events: list[tuple[int, int, int]] = []

    def walk(nodes) -> None:
        for node in nodes:
            if str(node.tag).endswith("Allocation"):
                events.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
            walk(node.children)

    walk(prof.profiler.kineto_results.experimental_event_tree())
    if not events:
        return 0
    events.sort()
    start = events[0][2] - events[0][1]
    return max(total for _, _, total in events) - start


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


def _placeholder_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<pad>": 0, "<unk>": 1}, unk_token="<unk>")),
                                   pad_token="<pad>", unk_token="<unk>")


def _lora_trainer(model, shape: StepShape, output_dir: str):
    """A real `LuneTrainer` around `model`, told not to move it (fake weights cannot be moved)."""
    from datasets import Dataset

    from .config import CHECKPOINTING, LuneConfig
    from .trainer import LuneTrainer

    @dataclass
    class EstimateConfig(LuneConfig):
        @property
        def place_model_on_device(self) -> bool:
            return False

    args = EstimateConfig(output_dir=output_dir, objective=shape.objective, use_cpu=True, report_to=[],
                          **{CHECKPOINTING: shape.activation_checkpointing}, lora_dropout=shape.lora_dropout,
                          lora_r=shape.lora_r, lora_alpha=shape.lora_r, per_device_train_batch_size=shape.batch_size,
                          max_length=shape.max_length, disable_tqdm=True)
    rows = Dataset.from_list([{"input_ids": [1, 1], "labels": [-100, 1]}])
    retain = rows if shape.retain else None
    return LuneTrainer(model, args, train_dataset=rows, retain_dataset=retain,
                       processing_class=_placeholder_tokenizer())


def estimate_step_memory(config, shape: StepShape | None = None, *, real: bool = False, device: str = "cpu",
                         output_dir: str | None = None) -> MemoryEstimate:
    """Peak memory of one training step of `config`'s architecture (a `PretrainedConfig`).

    `real=False` (default): fake tensors, any size, bytes as a CUDA device would count them.
    `real=True`: random real weights on `device`, the peak read from its allocator (for validation): the CPU
    allocator's profiler events, or `torch.cuda.max_memory_allocated` on a GPU.
    """
    import tempfile

    from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily

    from . import logits as logits_module
    from . import objectives
    from .config import CHECKPOINTING, LuneConfig
    from .objectives import OBJECTIVES, sequence_nll
    from .trainer import default_lora_config, wrap_with_adapter

    shape = shape or StepShape()
    if shape.objective not in OBJECTIVES:
        raise ValueError(f"Unknown objective {shape.objective!r}. Valid objectives: {', '.join(OBJECTIVES)}.")
    spec = OBJECTIVES[shape.objective]
    dtype = getattr(torch, shape.dtype)
    mode = None if real else FakeTensorMode(allow_non_fake_inputs=False)
    inside = mode if mode is not None else contextlib.nullcontext()
    tracker = _tracker_class()()
    phases: dict[str, int] = {}

    def mark(name: str) -> None:
        phases[name] = tracker.get_tracker_snapshot("peak").get(torch.device("cpu"), {}).get("Total", 0)

    with _gpu_accounting(fake=not real), tempfile.TemporaryDirectory() as tmp:
        model = _build(config, dtype, mode, device)
        reference = None
        trainer = None
        if shape.method == "lora":
            if shape.activation_checkpointing:
                model.enable_input_require_grads()
            lora_args = LuneConfig(output_dir=tmp, lora_r=shape.lora_r, lora_alpha=shape.lora_r,
                                   lora_dropout=shape.lora_dropout)
            with torch.device("meta") if mode is not None else contextlib.nullcontext():
                model = wrap_with_adapter(model, default_lora_config(lora_args))
            for name, module in model.named_modules():  # peft skips its fp32 adapter cast on the meta device
                if name.endswith(("lora_A.default", "lora_B.default")):
                    module.to(torch.float32)
        elif shape.method == "full_reference":
            reference = _build(config, dtype, mode, device).requires_grad_(False)
        if mode is not None:
            _to_fake(model, mode)
            if reference is not None:
                _to_fake(reference, mode)
        if shape.method == "lora":
            trainer = _lora_trainer(model, shape, output_dir or tmp)
            if shape.activation_checkpointing:
                _enable_checkpointing(model, getattr(trainer.args, f"{CHECKPOINTING}_kwargs"))
            features = _features(shape, spec, config.vocab_size)
            batch = {k: v.to(device) for k, v in trainer.data_collator(features).items()}
            windows = {}  # the answer window is data-dependent: computed on the real labels, looked up when fake

        elif shape.activation_checkpointing:
            _enable_checkpointing(model, {"use_reentrant": False})
        model.train()
        trainable = [p for p in model.parameters() if p.requires_grad]
        n_total = sum(p.numel() for p in model.parameters())
        parameters = {"total": n_total, "trainable": sum(p.numel() for p in trainable),
                      "reference": sum(p.numel() for p in reference.parameters()) if reference is not None else 0}

        with inside:
            if trainer is not None:
                optimizer = trainer.create_optimizer()
                if mode is not None:
                    real_batch = batch
                    batch = {k: mode.from_tensor(v) for k, v in real_batch.items()}
                    with unset_fake_temporarily():
                        for key, value in batch.items():
                            if key.endswith("_labels"):
                                windows[id(value)] = logits_module.answer_window(real_batch[key])
                master = None
            else:
                master = [p.detach().float() for p in trainable]  # fp32 master weights (mixed precision)
                optimizer = torch.optim.AdamW(master, lr=1e-5, foreach=True)
                ids = torch.randint(1, config.vocab_size, (shape.batch_size, shape.max_length), device=device)
            # Steady state: AdamW creates its states at the first step and keeps them; every later step peaks
            # with them live. One step on zero gradients creates them before the tracked step.
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            tracked = [model, optimizer, *([reference] if reference is not None else []), *(master or [])]
            tracked += list(batch.values()) if trainer is not None else [ids]
            tracker.track_external(*tracked)
            states = [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
            before = None if mode is not None else _live_bytes(
                [*model.parameters(), *model.buffers(), *(reference.parameters() if reference is not None else []),
                 *(master or []), *states])

            def lora_step() -> None:
                loss = trainer.compute_loss(model, batch)
                mark("forward")
                loss.backward()
                mark("backward")
                optimizer.step()
                mark("optimizer")
                optimizer.zero_grad(set_to_none=True)

            def full_step() -> None:
                def nll(m) -> torch.Tensor:
                    out = m(input_ids=ids, use_cache=False)
                    return sequence_nll(out.logits[:, :-1], ids[:, 1:])[0]

                if reference is not None:
                    with torch.no_grad():
                        ref_nll = nll(reference)
                    mark("reference")
                    from .objectives import npo

                    loss = npo(nll(model), ref_nll, 0.1)
                else:
                    loss = nll(model).mean()
                mark("forward")
                loss.backward()
                mark("backward")
                for m, p in zip(master, trainable, strict=True):
                    m.grad = p.grad.float()
                    p.grad = None
                    tracker.tag_grad(m.grad)
                optimizer.step()
                with torch.no_grad():
                    for m, p in zip(master, trainable, strict=True):
                        p.copy_(m)
                mark("optimizer")
                optimizer.zero_grad(set_to_none=True)

            step = lora_step if trainer is not None else full_step

            @contextlib.contextmanager
            def patched() -> Iterator[None]:
                """Stand-ins for what a fake tensor cannot do: read values (the loss's finiteness, the answer window,
                boolean selections of answer positions). Every position of these synthetic answers is an answer
                position, so a selection is a reshape with the same output size. The finiteness check (a host read
                and a host copy of the adapter) is left out of real runs too: it holds no device memory."""
                saved = objectives.token_logprobs, logits_module.answer_window
                if mode is not None:
                    objectives.token_logprobs = _all_answer_logprobs
                    logits_module.answer_window = lambda labels: windows[id(labels)]
                if trainer is not None:
                    trainer._guard_finite = lambda model, loss: None
                try:
                    yield
                finally:
                    objectives.token_logprobs, logits_module.answer_window = saved

            def run() -> None:
                with tracker, patched():
                    step()

            allocator = None
            if real and device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                run()
                torch.cuda.synchronize()
                allocator = torch.cuda.max_memory_allocated()  # everything live, like the estimate
            elif real:
                with unset_fake_temporarily():
                    allocator = _cpu_allocator_peak(run) + before
            else:
                run()
        snap = tracker.get_tracker_snapshot("peak")
        categories = snap.get(torch.device("cpu"), {})
        breakdown = {str(getattr(k, "value", k)): int(v) for k, v in categories.items() if str(k) != "Total"}
        peak = int(categories.get("Total", 0))
        extra = {"phases": phases}
        if allocator is not None:
            extra["allocator_peak_bytes"] = int(allocator)
            extra["tracker_peak_bytes"] = peak
            peak = int(allocator)
    return MemoryEstimate(shape=shape, peak_bytes=peak, breakdown=breakdown, parameters=parameters, real=real,
                          extra=extra)
