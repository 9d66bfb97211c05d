"""How a step is launched: the launch shapes, the chunk tables and their cache, the step counters, and `run`,
which every op's entry point calls with its kernel.

A call updates a whole list of tensors (one dtype, as the contract fusedreg._ops.check says) in at most two
launches, plus one per grouped param with group_l1 (group.py):

* a chunk table: one row of ROW int64 per CHUNK elements of every non-empty param (the param's, grad's and state
  tensors' addresses already advanced to the chunk, the step tensor's address, and the chunk's element count).
  It is built on the host once per list and cached, keyed by the tensors' addresses and sizes, so a
  steady-state step only rebuilds the key (one pass of `data_ptr()` over the lists) and launches.
* Adam/Adagrad: one launch of `steps_kernel` over a table of the step tensors' addresses adds 1 to every step
  (unless found_inf). The step must be advanced before any program reads it, and programs of one launch are
  unordered, hence the separate launch.
* one launch of the optimizer's kernel, grid = number of chunks: program i loads row i, turns the addresses into
  typed pointers (`col`) and walks its chunk in BLOCK-wide pieces (full pieces unmasked, so the compiler can
  vectorize them when every address is ALIGN-byte aligned; the last piece masked).
* sparse grads (rows, fusedreg._ops.ROWS): the chunks cover the grads (the present rows' values); a row of the
  table also holds the row indices' address, the param's row length and the chunk's first element, and
  `targets` maps each grad element j*K + k to the param/state element rows[j]*K + k. The grads' values and
  indices are new tensors every step, so the table is cached by the row counts instead (a step with the counts
  of an earlier one refills only those two address columns) and copied to the device every step. The rows must
  be distinct (programs
  update them in parallel): the entries check that on the host for CPU tensors (`_ops.rows_ok`); on CUDA no
  kernel checks it (reading the indices on the host would cost a sync), and the Python path makes it so
  (`functional._coalesced`; tests/test_sparse.py steps uncoalesced grads with repeated rows through it).

Non-contiguous params/states go through contiguous copies written back afterwards (a slow path that also
rebuilds the table every step). The first call on a new list copies its table to the device (synchronously),
so capture a CUDA graph only after a warm-up step.

The kernels are plain @triton.jit: compiled for CUDA tensors, or, with TRITON_INTERPRET=1 set before import, run
by Triton's interpreter on CPU tensors (a pointer is then a host address, so the address tables work unchanged;
the interpreter cannot read CUDA tensors through a table, so those are refused there).
"""
from collections import OrderedDict

import numpy as np
import torch
import triton
import triton.language as tl

from .math import INTERPRET

# Compiled launch shape: each program handles CHUNK elements (one table row) in BLOCK-wide pieces.
BLOCK = 1024
CHUNK = 4096
NUM_WARPS = 4
# The interpreter runs one program at a time in numpy: big blocks, few programs. (Read at call time: tests
# shrink them so that small tensors span several chunks.)
INTERPRET_BLOCK = 4096
INTERPRET_CHUNK = 4096
STEPS_BLOCK = 256

# int64 per chunk row: param, grad, state0, state1, state2, step, count, (pad), then with sparse grads: the row
# indices, the row length, the chunk's first grad element, (pad).
ROW = tl.constexpr(12)
COUNT = tl.constexpr(6)
STEP = tl.constexpr(5)
INDEX = tl.constexpr(8)
ROW_LEN = tl.constexpr(9)
FIRST = tl.constexpr(10)
ALIGN = tl.constexpr(16)
CACHE_SIZE = 64

# Compiled: no FMA contraction (math.py's numerics). The interpreter ignores these.
OPTIONS = {"num_warps": NUM_WARPS, "enable_fp_fusion": False}

TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
             torch.float64: tl.float64}


@triton.jit
def col(row, K: tl.constexpr, DT: tl.constexpr, ALIGNED: tl.constexpr):
    """Column K of a chunk row as a pointer to DT."""
    ptr = tl.load(row + K).to(tl.pointer_type(DT))
    if ALIGNED:
        ptr = tl.multiple_of(ptr, ALIGN)
    return ptr


@triton.jit
def chunk_row(rows, found_inf, HAS_FI: tl.constexpr):
    """This program's row and its element count (0 when found_inf is set: the step is skipped)."""
    row = rows + tl.program_id(0).to(tl.int64) * ROW
    n = tl.load(row + COUNT)
    if HAS_FI:
        n = tl.where(tl.load(found_inf) == 0, n, 0)
    return row, n


@triton.jit
def targets(row, offs, n, SPARSE: tl.constexpr):
    """The param/state offsets of the chunk's grad elements offs (< n): offs itself, or with sparse grads
    rows[j]*K + k for grad element j*K + k."""
    if SPARSE:
        index = col(row, INDEX, tl.int64, False)
        k = tl.load(row + ROW_LEN)
        e = tl.load(row + FIRST) + offs
        j = e // k
        return tl.load(index + j, mask=offs < n, other=0) * k + (e - j * k)
    else:
        return offs


@triton.jit(do_not_specialize=["n"])
def steps_kernel(addrs, n, found_inf, HAS_FI: tl.constexpr, BLOCK: tl.constexpr):
    if HAS_FI:
        n = tl.where(tl.load(found_inf) == 0, n, 0)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    ptrs = tl.load(addrs + offs, mask=mask, other=0).to(tl.pointer_type(tl.float32))
    tl.store(ptrs, tl.load(ptrs, mask=mask) + 1, mask=mask)


def opmath(dtype):
    """The compute dtype (and the state's) of params of `dtype`."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def shape(device):
    """(BLOCK, CHUNK) for tensors on `device`, which this import's mode must be able to run."""
    if INTERPRET:
        if device.type != "cpu":
            raise RuntimeError("fusedreg's Triton kernels read tensors through address tables, which Triton's "
                               "interpreter (TRITON_INTERPRET=1) can only do for CPU tensors; move the tensors to "
                               f"the CPU or unset TRITON_INTERPRET (got {device})")
        return INTERPRET_BLOCK, INTERPRET_CHUNK
    if device.type != "cuda":
        raise RuntimeError(f"fusedreg's Triton kernels run CUDA tensors (CPU tensors only with TRITON_INTERPRET=1 "
                           f"set before import), got {device}")
    return BLOCK, CHUNK


def guard(device):
    # Interpreted, masked-off lanes compute on zeros (0/0 in numpy warns); compiled, launch on the tensors' GPU.
    return np.errstate(all="ignore") if INTERPRET else torch.cuda.device(device)


_cache = OrderedDict()


def plan(device, chunk, cols, steps, index=None):
    """The chunk table of one call, cached: (rows, n_chunks, aligned, step addresses). index: the row indices of
    sparse grads, or None. Sparse: cached by everything but the grads' and indices' addresses (new tensors every
    step), which are filled in on every call."""
    ptrs = torch.Tensor.data_ptr
    sparse = index is not None
    key = (device, chunk, cols[0][0].dtype, tuple(tuple(map(ptrs, c)) for k, c in enumerate(cols)
                                                  if not (sparse and k == 1)),
           tuple(map(torch.Tensor.numel, cols[1])), tuple(map(ptrs, steps)), sparse)
    found = _cache.get(key)
    if found is not None:
        _cache.move_to_end(key)
    else:
        found = _cache[key] = _build(device, chunk, cols, steps, index)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return _with_rows(device, found, cols[1], index) if sparse else found


def _with_rows(device, found, grads, index):
    """A sparse plan with this call's grad and index addresses in its rows (found's rows stay on the host)."""
    rows, n_chunks, aligned, step_addrs, owner, start, idx = found
    rows = rows.clone()
    esize = grads[0].element_size() if grads else 0
    rows[:, 1] = torch.tensor([grads[i].data_ptr() for i in idx], dtype=torch.int64)[owner] + start * esize
    rows[:, INDEX.value] = torch.tensor([index[i].data_ptr() for i in idx], dtype=torch.int64)[owner]
    aligned = aligned and bool((rows[:, 1] % ALIGN.value == 0).all())
    return rows.reshape(-1).to(device), n_chunks, aligned, step_addrs


def _build(device, chunk, cols, steps, index):
    params, grads = cols[0], cols[1]
    idx = [i for i, g in enumerate(grads) if g.numel()]  # chunks cover the grads (sparse: the rows' values)
    addrs = torch.zeros(len(idx), COUNT.value, dtype=torch.int64)
    esize = torch.zeros(COUNT.value, dtype=torch.int64)
    for k, c in enumerate(cols):
        addrs[:, k] = torch.tensor([c[i].data_ptr() for i in idx], dtype=torch.int64)
        # Sparse: only the grad's address moves with the chunk (targets() finds the param's and state's).
        esize[k] = c[0].element_size() if index is None or k == 1 else 0
    if steps:
        addrs[:, STEP.value] = torch.tensor([steps[i].data_ptr() for i in idx], dtype=torch.int64)
    numel = torch.tensor([grads[i].numel() for i in idx], dtype=torch.int64)
    nchunks = (numel + chunk - 1) // chunk
    owner = torch.repeat_interleave(torch.arange(len(idx)), nchunks)
    first = torch.cumsum(nchunks, 0) - nchunks
    start = (torch.arange(int(nchunks.sum())) - first[owner]) * chunk
    rows = torch.zeros(len(owner), ROW.value, dtype=torch.int64)
    rows[:, :COUNT.value] = addrs[owner] + start[:, None] * esize[None, :]
    rows[:, COUNT.value] = torch.clamp_max(numel[owner] - start, chunk)
    step_addrs = torch.tensor([s.data_ptr() for s in steps], dtype=torch.int64).to(device) if steps else None
    if index is not None:  # the grad and index addresses are the call's (_with_rows)
        rows[:, ROW_LEN.value] = torch.tensor([grads[i][0].numel() for i in idx], dtype=torch.int64)[owner]
        rows[:, FIRST.value] = start
        cols_but_grads = [k for k in range(len(cols)) if k != 1]
        aligned = bool((rows[:, cols_but_grads] % ALIGN.value == 0).all())
        return rows, len(owner), aligned, step_addrs, owner, start, idx
    aligned = bool((rows[:, :len(cols)] % ALIGN.value == 0).all())
    return rows.reshape(-1).to(device), len(owner), aligned, step_addrs


def dense(cols):
    """Swap non-contiguous tensors for contiguous copies: (cols, [(original, copy)] to write back)."""
    back = []
    done = {}  # an unused column is another column's list: reuse its copies, or a stale copy is written back last
    for k, lst in enumerate(cols):
        if id(lst) in done or all(map(torch.Tensor.is_contiguous, lst)):
            done.setdefault(id(lst), lst)
            continue
        new = []
        for t in lst:
            c = t.contiguous()
            if c is not t and k != 1:  # grads are only read
                back.append((t, c))
            new.append(c)
        done[id(lst)] = new
    return [done[id(lst)] for lst in cols], back


def run(kernel, cols, steps, grad_scale, found_inf, index=None, **args):
    """Advance `steps` (a list, [] for SGD) and launch `kernel` over the chunk table of `cols` (params, grads,
    then the op's state lists; an unused column repeats another list). `args` go to the kernel by name. index:
    sparse grads' row indices (the kernel then gets SPARSE=True and maps its elements with `targets`), or None."""
    params = cols[0]
    if not params:
        return
    device = params[0].device
    block, size = shape(device)
    cols, back = dense(cols)
    if index is not None:
        index = [r.contiguous() for r in index]
    rows, n_chunks, aligned, step_addrs = plan(device, size, cols, steps, index)
    # The reference reads these on any device; a kernel can only read its own device's memory.
    gs = None if grad_scale is None else grad_scale.to(device)
    fi = None if found_inf is None else found_inf.to(device)
    dtype = params[0].dtype
    with guard(device):
        if steps:
            steps_kernel[(triton.cdiv(len(steps), STEPS_BLOCK),)](
                step_addrs, len(steps), fi, HAS_FI=fi is not None, BLOCK=STEPS_BLOCK)
        if n_chunks:
            kernel[(n_chunks,)](
                rows, gs, fi, **args, **({} if index is None else {"SPARSE": True}), P_DT=TL_DTYPES[dtype],
                CDT=opmath(dtype), HAS_GS=gs is not None,
                HAS_FI=fi is not None, ALIGNED=aligned, BLOCK=block, CHUNK=size, **OPTIONS)
    for t, c in back:
        t.copy_(c)
