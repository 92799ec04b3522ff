"""Compile every generated kernel for a GPU target without a GPU (Triton's ahead-of-time path), at each variant's
default launch configuration: catches what the interpreter cannot (type errors, layouts, shared-memory overflow).

The argument types come from a real launch that is recorded instead of run: the launcher is called on small
CPU tensors with the kernel replaced by a recorder, so the check compiles exactly what a launch would.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.tools.tensor_descriptor import TensorDescriptor

from .load import load_variant
from .variants import VARIANTS, Variant

_TYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int32: "i32"}


class _Recorder:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __getitem__(self, grid):
        def record(*args, **kwargs):
            self.calls.append((args, kwargs))

        return record


@contextmanager
def _recording(module):
    names = [n for n, obj in vars(module).items() if isinstance(obj, triton.runtime.jit.JITFunction)]
    originals = {n: getattr(module, n) for n in names}
    recorders = {n: _Recorder(fn) for n, fn in originals.items()}
    for n, r in recorders.items():
        setattr(module, n, r)
    try:
        yield recorders
    finally:
        for n, fn in originals.items():
            setattr(module, n, fn)


def _launch_small(variant: Variant, dtype: torch.dtype, DHQK: int, DHHV: int, config: dict | None = None):
    """Call the variant's launcher once on small CPU inputs (nothing runs: the kernels are recorders), with its
    default launch configuration (and a few other structural choices) or ``config``."""
    from .families import default_config
    from .launch import chunkwise, chunkwise_bw, parallel, parallel_bw, recurrent
    from .reference import random_inputs

    x = random_inputs(1, 2, 40, DHQK, DHHV, dtype=dtype, gate_dtype=torch.float32, with_states=True)
    args = [x[n] for n in "qkvif"]
    states = [x["c_initial"].float(), x["n_initial"].float(), x["m_initial"].float()]
    if variant.family == "chunkwise_fw":
        chunkwise.chunkwise_fw(*args, *states, variant=variant, config=config, return_last_states=True)
        if variant.template == chunkwise.TWOPASS and config is None:
            # the other output kernel, gates computed first, v weighted, C stored through a descriptor (one tile per
            # chunk: not as planes)
            config = dict(default_config(variant, DHQK, DHHV), out_values="tiles", states_gates="pre",
                          states_weighting="v", states_n="sum",
                          states_store="plain" if variant.params["state"] == "planes" else "tma")  # fmt: skip
            chunkwise.chunkwise_fw(*args, *states, variant=variant, config=config, return_last_states=True)
    elif variant.family == "parallel_fw":
        parallel.parallel_fw(*args, *states, variant=variant, config=config, return_last_states=False)
    elif variant.family == "sequence_fw":
        recurrent.sequence_fw(*args, *states, variant=variant, config=config, return_last_states=True)
    elif variant.family == "chunkwise_bw":
        B, NH, S = args[0].shape[:3]
        given = config is not None
        config = chunkwise_bw.check_config(variant, config or default_config(variant, DHQK, DHHV))
        f32 = dict(dtype=torch.float32)  # kernels only: "recompute" would launch the forward's states kernel
        stats = (torch.zeros(B, NH, S, **f32), torch.zeros(B, NH, S, **f32))
        h = torch.zeros_like(args[2])
        dlast = (torch.zeros_like(states[0]), torch.zeros_like(states[1]), torch.zeros_like(states[2]))

        def launch(config):  # with border states of the configuration's stride, in the form the launch reads them
            NC = -(-S // config["chunk"])
            # recomputed states come in the buffers' form, reused ones in the training forward's
            form = config["state_buffers"] if config["states"] == "recompute" else chunkwise.TRAINING_STATES
            C_dtype = torch.float32 if form == "float32" else dtype
            planes = (2,) if form == "planes" else ()
            borders = (torch.zeros(B, NH, NC, *planes, DHQK, DHHV, dtype=C_dtype), torch.zeros(B, NH, NC, DHQK, **f32),
                       torch.zeros(B, NH, NC, **f32))  # fmt: skip
            chunkwise_bw.chunkwise_bw(*args, *states, h, *stats, h, *dlast, tuple(states), variant=variant,
                                      config=dict(config, states="reuse"), borders=borders)  # fmt: skip

        launch(config)
        if not given and dtype == torch.bfloat16:
            # the states and their gradients as planes (recomputed: both read as planes), and for the fused variant
            # the reverse recurrence with its weights computed first and its dC stored through a descriptor (its
            # kernels are the same in both variants)
            launch(dict(config, states="recompute", state_buffers="planes"))
            if variant.params["kernels"] == "fused":
                launch(dict(config, dstate_gates="pre"))
                launch(dict(config, state_stores="tma"))
    elif variant.family == "parallel_bw":
        B, NH, S = args[0].shape[:3]
        f32 = dict(dtype=torch.float32)
        h = torch.zeros_like(args[2])
        dlast = (torch.zeros_like(states[0]), torch.zeros_like(states[1]), torch.zeros_like(states[2]))
        parallel_bw.parallel_bw(*args, *states, h, torch.zeros(B, NH, S, **f32), torch.zeros(B, NH, S, **f32), h,
                                *dlast, tuple(states), variant=variant,
                                config=config or default_config(variant, DHQK, DHHV))  # fmt: skip
    elif variant.family == "step_fw":
        q, k, v, i, f = (a[:, :, 0] for a in args)
        C, n, m = (s.clone().contiguous() for s in states)
        recurrent.step_fw(q, k, v, i, f, C, n, m, variant=variant, config=config, out=(C, n, m))
        if config is None:
            split = dict(default_config(variant, DHQK, DHHV), k_tiles="programs")  # a program per tile
            recurrent.step_fw(q, k, v, i, f, C, n, m, variant=variant, config=split, out=(C, n, m))


def _source(fn, args, kwargs, float_type: str = "fp32"):
    """The kernel with the argument types and specialisations a launch of ``args``/``kwargs`` gives it, and its
    compile options. A Python float is fp32 to Triton's launcher; ``float_type="fp64"`` types it as torch.compile's
    Inductor and jax-triton do."""
    signature, constexprs, attrs = {}, {}, {}
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    values = dict(zip([p.name for p in fn.params], args)) | kwargs
    for index, p in enumerate(fn.params):
        value = values[p.name]
        if p.is_constexpr:
            signature[p.name], constexprs[p.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[p.name] = "*" + _TYPES[value.dtype]
            aligned = value.data_ptr() % 16 == 0
        elif isinstance(value, TensorDescriptor):  # built by a launcher (launch.common.tile_store)
            block = ",".join(map(str, value.block_shape))
            signature[p.name], aligned = f"tensordesc<{_TYPES[value.base.dtype]}[{block}]>", False
        elif isinstance(value, bool):
            signature[p.name], aligned = "i1", False
        elif isinstance(value, int):
            signature[p.name], aligned = "i32", value % 16 == 0
        else:
            signature[p.name], aligned = float_type, False
        if not p.is_constexpr and aligned:  # as Triton's launcher specializes: 16-byte aligned pointers, and
            attrs[(index,)] = [["tt.divisibility", 16]]  # integers divisible by 16 (what vectorized access needs)
    return triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs), options


def _compile(fn, args, kwargs, target: GPUTarget):
    src, options = _source(fn, args, kwargs)
    return triton.compile(src, target=target, options=options)


def ttir(fn, args, kwargs, target: GPUTarget, float_type: str = "fp32") -> str:
    """The kernel's Triton IR as its source generates it (before any optimisation pass), float arguments typed
    ``float_type``: what the code asks for, which is what a type check reads."""
    from triton._C.libtriton import ir
    from triton.compiler.compiler import make_backend

    src, options = _source(fn, args, dict(kwargs), float_type)
    backend = make_backend(target)
    options = backend.parse_options(options)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    module = src.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(),
                         context)  # fmt: skip
    return str(module)


def launches(variants=VARIANTS, dtypes=(torch.bfloat16, torch.float32), head_dims=((64, 64), (256, 512))):
    """Every distinct kernel launch of each variant's launcher at its default configuration (and the few other
    structural choices _launch_small makes), recorded on small CPU inputs: (row, kernel, args, kwargs), where row
    names the variant, kernel, dtype and head dimensions."""
    for variant in variants:
        module = load_variant(variant)
        for dtype in dtypes:
            for DHQK, DHHV in head_dims:
                with _recording(module) as recorders:
                    _launch_small(variant, dtype, DHQK, DHHV)
                seen = set()
                for name, rec in recorders.items():
                    for args, kwargs in rec.calls:
                        same = (name, repr(sorted((k, v) for k, v in kwargs.items() if not torch.is_tensor(v))))
                        if same in seen:  # launched again with the same constants (e.g. the states kernel)
                            continue
                        seen.add(same)
                        row = dict(variant=variant.name, kernel=name, dtype=str(dtype).removeprefix("torch."),
                                   DHQK=DHQK, DHHV=DHHV)  # fmt: skip
                        yield row, rec.fn, args, kwargs


def check(arch: int = 90, dtypes=(torch.bfloat16, torch.float32), head_dims=((64, 64), (256, 512))) -> list[dict]:
    """Compile every kernel of every variant; one row per compile: variant, kernel, dtype, dims, seconds, shared
    memory bytes, registers spilled (when the backend reports them), or the error."""
    target = GPUTarget("cuda", arch, 32)
    rows = []
    for row, fn, args, kwargs in launches(VARIANTS, dtypes, head_dims):
        start = time.perf_counter()
        try:
            compiled = _compile(fn, args, dict(kwargs), target)
            row.update(ok=True, shared=compiled.metadata.shared, spills=getattr(compiled, "n_spills", None))
        except Exception as err:  # noqa: BLE001 - every failure is reported, none stops the check
            row.update(ok=False, error=f"{type(err).__name__}: {str(err)[:500]}")
        row["seconds"] = round(time.perf_counter() - start, 2)
        rows.append(row)
    return rows
