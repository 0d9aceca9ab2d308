"""Fuzzing the volume reader and ``edgepanc run`` with hostile NIfTI and MHA files.

Every case must end in a valid read (3D, finite voxels, positive spacing, finite orthonormal
geometry) or a one-line :class:`EdgepancError` naming the file: never another exception, never
an allocation past the memory budget. Seeds are fixed (``derandomize``), so CI is reproducible.
"""

from __future__ import annotations

import gzip
import resource
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nifti_support import DATATYPES, NiftiHeader

from edgepanc.errors import EdgepancError
from edgepanc.io.volume import MAX_AXIS_LENGTH, inspect_image, read_image, read_label

from runtime_support import make_tiny_bundle, run_cli

READER_CASES = 1000
CLI_CASES = 100
BUDGET = 64_000_000  # bytes; the fuzzed volumes are tiny unless a header lies
SETTINGS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_FLOATS = st.one_of(
    st.sampled_from([1.0, 0.8, 2.5, 0.0, -1.0, float("nan"), float("inf"), 1e-30, 1e30]),
    st.floats(-1e6, 1e6, width=32),
)
_WIDTH = st.sampled_from([0.0, -0.0, float("nan"), float("inf"), -1.0, 0.8, 1e-30, 4e3])
_PIXDIM = st.tuples(
    st.sampled_from([1.0, -1.0, 0.0, float("nan")]), _WIDTH, _WIDTH, _WIDTH, *[_FLOATS] * 4
)
_AXIS = st.one_of(
    st.integers(1, 9), st.integers(-2, 0), st.sampled_from([MAX_AXIS_LENGTH + 1, 32767])
)


@dataclass(frozen=True)
class Case:
    """One fuzzed file: its name and bytes."""

    name: str
    data: bytes
    must_refuse: bool = False  # the file hides a defect that ITK would read past silently


def _voxel_bytes(shape: list[int], itemsize: int, seed: int, cut: float) -> bytes:
    count = int(np.prod([max(n, 0) for n in shape], dtype=np.int64)) * itemsize
    count = min(count, 1 << 20)  # a header that lies about its size gets what fits
    data = np.random.default_rng(seed).integers(0, 256, count, dtype=np.uint8).tobytes()
    return data[: int(len(data) * cut)]


def _flip(data: bytes, flips: list[tuple[float, int]]) -> bytes:
    out = bytearray(data)
    for where, value in flips:
        if out:
            out[int(where * (len(out) - 1))] ^= value
    return bytes(out)


_NIFTI_FIELDS = (
    "ndim", "shape", "datatype", "bitpix", "pixdim", "vox_offset", "scaling", "codes",
    "quatern", "srow", "voxels", "flips", "container",
)  # fmt: skip


@st.composite
def nifti_cases(draw: st.DrawFn) -> Case:
    """A valid NIfTI with up to four of its fields (or its bytes) made hostile."""
    bad = draw(st.sets(st.sampled_from(_NIFTI_FIELDS), max_size=3))

    def pick(field: str, valid: object, hostile: st.SearchStrategy) -> object:
        return draw(hostile) if field in bad else valid

    ndim = pick("ndim", 3, st.integers(-1, 8))
    shape = [draw(st.integers(1, 9)) for _ in range(3)] + [1, 1, 1, 1]
    shape = pick("shape", shape, st.lists(_AXIS, min_size=7, max_size=7))
    datatype = draw(st.sampled_from([4, 16, 2, 64, 512]))
    datatype = pick(
        "datatype", datatype, st.one_of(st.sampled_from(sorted(DATATYPES)), st.integers(-5, 3000))
    )
    srow = [[0.8, 0.0, 0.0, 1.0], [0.0, 0.8, 0.0, 2.0], [0.0, 0.0, 2.5, 3.0]]
    srow = pick(
        "srow",
        srow,
        st.one_of(
            st.sampled_from([2e-4, 5e-3, 0.3]).map(
                lambda off: [[0.8, off, 0.0, 1.0], [0.0, 0.8, 0.0, 2.0], [0.0, 0.0, 2.5, 3.0]]
            ),
            st.lists(st.lists(_FLOATS, min_size=4, max_size=4), min_size=3, max_size=3),
        ),
    )
    codes = pick(
        "codes",
        draw(st.sampled_from([(0, 0), (0, 0), (1, 0), (1, 1), (0, 2)])),
        st.tuples(st.integers(-1, 4), st.integers(-1, 4)),
    )
    scaling = pick("scaling", (1.0, 0.0), st.tuples(_FLOATS, _FLOATS))
    header = NiftiHeader(
        dim=(ndim, *(max(min(n, 32767), -32768) for n in shape)),
        datatype=datatype,
        bitpix=pick("bitpix", None, st.integers(-8, 128)),
        pixdim=pick("pixdim", (1.0, 0.8, 0.8, 2.5, 0, 0, 0, 0), _PIXDIM),
        vox_offset=pick("vox_offset", 352.0, _FLOATS),
        scl_slope=scaling[0],
        scl_inter=scaling[1],
        qform_code=codes[0],
        sform_code=codes[1],
        quatern=pick("quatern", (0.0, 0.0, 0.0), st.tuples(*[st.floats(-2, 2, width=32)] * 3)),
        qoffset=(1.0, 2.0, 3.0),
        srow=srow,
    )
    itemsize = DATATYPES[datatype].itemsize if datatype in DATATYPES else 2
    cut = pick("voxels", 1.0, st.floats(0.0, 1.0))
    voxels = _voxel_bytes(shape[: max(ndim, 0)], itemsize, draw(st.integers(0, 2**16)), cut)
    raw = _flip(header.pack() + voxels, pick("flips", [], _flips()))
    must_refuse = _hides_a_defect(bad, header, voxels)
    container = draw(st.sampled_from(["nii", "gz"]))
    container = pick("container", container, st.sampled_from(["gz_forged_trailer", "gz_cut"]))
    if container == "nii":
        return Case("case_0000.nii", raw, must_refuse)
    blob = gzip.compress(raw, compresslevel=1)
    if container == "gz_forged_trailer":  # claim the uncompressed size the header promises
        promised = 352 + int(np.prod([max(n, 0) for n in shape[:ndim]], dtype=object)) * itemsize
        blob = blob[:-4] + struct.pack("<I", promised % 2**32)
    elif container == "gz_cut":
        blob = blob[: draw(st.integers(0, len(blob)))]
    return Case("case_0000.nii.gz", blob, must_refuse)


def _hides_a_defect(bad: set[str], header: NiftiHeader, voxels: bytes) -> bool:
    """NaN or infinite float voxels, or a zero voxel width without orientation codes: ITK reads
    both as valid (zeros, 1 mm), so only the case's own record says it must be refused."""
    if bad & {"ndim", "shape", "datatype", "bitpix", "vox_offset", "flips", "voxels"}:
        return False  # the layout is no longer known for sure
    dtype = DATATYPES[header.datatype]
    if dtype.kind == "f" and not np.all(np.isfinite(np.frombuffer(voxels, dtype))):
        return True
    unoriented = header.qform_code <= 0 and header.sform_code <= 0
    widths = header.pixdim[1:4]
    return unoriented and not all(np.isfinite(w) and w > 0 for w in widths)


def _cut() -> st.SearchStrategy[float]:
    return st.one_of(st.just(1.0), st.floats(0.0, 1.0))


def _flips() -> st.SearchStrategy[list[tuple[float, int]]]:
    return st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=4)


_MHA_TYPES = {"MET_UCHAR": 1, "MET_SHORT": 2, "MET_FLOAT": 4, "MET_DOUBLE": 8, "MET_BOGUS": 2}


_MHA_FIELDS = (
    "ndim",
    "shape",
    "element",
    "spacing",
    "matrix",
    "offset",
    "channels",
    "voxels",
    "flips",
)


@st.composite
def mha_cases(draw: st.DrawFn) -> Case:
    """A valid MetaImage with up to three of its fields (or its bytes) made hostile."""
    bad = draw(st.sets(st.sampled_from(_MHA_FIELDS), max_size=3))

    def pick(field: str, valid: object, hostile: st.SearchStrategy) -> object:
        return draw(hostile) if field in bad else valid

    ndim = pick("ndim", 3, st.integers(0, 5))
    shape = pick(
        "shape",
        [draw(st.integers(1, 9)) for _ in range(3)],
        st.lists(_AXIS, min_size=3, max_size=3),
    )
    element = draw(st.sampled_from(["MET_UCHAR", "MET_SHORT", "MET_FLOAT", "MET_DOUBLE"]))
    element = pick("element", element, st.sampled_from(sorted(_MHA_TYPES)))
    spacing = pick("spacing", [0.8, 0.8, 2.5], st.lists(_FLOATS, min_size=3, max_size=3))
    matrix = pick(
        "matrix",
        [1, 0, 0, 0, 1, 0, 0, 0, 1],
        st.one_of(
            st.sampled_from([2e-4, 5e-3, 0.3]).map(lambda off: [1, off, 0, 0, 1, 0, 0, 0, 1]),
            st.lists(_FLOATS, min_size=9, max_size=9),
        ),
    )
    offset = pick("offset", [1.0, 2.0, 3.0], st.lists(_FLOATS, min_size=3, max_size=3))
    lines = [
        "ObjectType = Image",
        f"NDims = {ndim}",
        f"DimSize = {' '.join(str(n) for n in shape)}",
        f"ElementType = {element}",
        f"ElementSpacing = {' '.join(f'{v:g}' for v in spacing)}",
        f"TransformMatrix = {' '.join(f'{v:g}' for v in matrix)}",
        f"Offset = {' '.join(f'{v:g}' for v in offset)}",
        f"ElementNumberOfChannels = {pick('channels', 1, st.integers(0, 3))}",
        "ElementDataFile = LOCAL",
    ]
    cut = pick("voxels", 1.0, st.floats(0.0, 1.0))
    voxels = _voxel_bytes(shape, _MHA_TYPES[element], draw(st.integers(0, 2**16)), cut)
    raw = _flip(("\n".join(lines) + "\n").encode() + voxels, pick("flips", [], _flips()))
    return Case("case_0000.mha", raw)


def _assert_valid(img: sitk.Image) -> None:
    size = img.GetSize()
    assert len(size) == 3 and min(size) >= 1 and max(size) <= MAX_AXIS_LENGTH
    assert img.GetNumberOfComponentsPerPixel() == 1
    assert all(np.isfinite(s) and s > 0 for s in img.GetSpacing())
    assert np.all(np.isfinite(img.GetOrigin()))
    direction = np.array(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-5)
    assert np.all(np.isfinite(sitk.GetArrayViewFromImage(img)))


def _assert_refusal(exc: EdgepancError, path: Path) -> None:
    message = str(exc)
    assert "\n" not in message and str(path) in message, message


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _read_one(path: Path, must_refuse: bool) -> str:
    """'read' or 'refused'; anything else escapes and fails the test."""
    try:
        inspect_image(path, max_bytes=BUDGET)
    except EdgepancError as exc:
        _assert_refusal(exc, path)
    try:
        img = read_image(path, max_bytes=BUDGET)
    except EdgepancError as exc:
        _assert_refusal(exc, path)
        return "refused"
    assert not must_refuse, f"{path} was read though it hides a defect"
    _assert_valid(img)
    return "read"


@pytest.mark.parametrize("kind", ["nifti", "mha"])
def test_fuzz_reader(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outcomes: Counter[str] = Counter()
    hidden = [0]  # cases whose defect only their record knows (see _hides_a_defect)
    before = _peak_rss()

    @settings(max_examples=READER_CASES // 2, **SETTINGS)
    @given(case=nifti_cases() if kind == "nifti" else mha_cases())
    def one(case: Case) -> None:
        folder = tmp_path / str(outcomes.total())
        folder.mkdir()
        path = folder / case.name
        path.write_bytes(case.data)
        outcomes[_read_one(path, case.must_refuse)] += 1
        hidden[0] += case.must_refuse

    one()
    with capsys.disabled():
        print(
            f"\nfuzz {kind} reader: {outcomes.total()} cases, {dict(outcomes)}, {hidden[0]} hid a defect"
        )
    assert outcomes.total() >= READER_CASES // 2
    assert outcomes["read"] >= 5 and outcomes["refused"] >= 5  # the fuzz reaches both ends
    assert kind == "mha" or hidden[0] >= 5
    assert _peak_rss() - before < 4 * BUDGET


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def test_fuzz_run_cli(tmp_path: Path, bundle: Path, capfd: pytest.CaptureFixture[str]) -> None:
    outcomes: Counter[str] = Counter()

    @settings(max_examples=CLI_CASES, **SETTINGS)
    @given(case=st.one_of(nifti_cases(), mha_cases()))
    def one(case: Case) -> None:
        folder = tmp_path / str(outcomes.total())
        (folder / "in").mkdir(parents=True)
        scan = folder / "in" / case.name
        scan.write_bytes(case.data)
        out = folder / "out"
        result = run_cli("run", scan, "--model", bundle, "--out", out, "--memory-budget", "2GB")
        written = sorted(p.name for p in out.iterdir()) if out.exists() else []
        # ITK's C++ code writes to file descriptor 2 past Python: nothing of it may show.
        native = capfd.readouterr().err
        assert native.strip() == "", native
        if result.exit_code == 0:
            assert not case.must_refuse, f"{scan} ran though it hides a defect"
            mask = read_label(out / "case.nii.gz")
            assert mask.GetSize() == read_image(scan).GetSize()
            outcomes["mask"] += 1
        else:
            assert result.exit_code == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
            assert not [name for name in written if name.startswith("case")], written
            outcomes["refused"] += 1

    one()
    with capfd.disabled():
        print(f"\nfuzz edgepanc run: {outcomes.total()} cases, {dict(outcomes)}")
    assert outcomes.total() >= CLI_CASES
    assert outcomes["mask"] >= 1 and outcomes["refused"] >= 1
