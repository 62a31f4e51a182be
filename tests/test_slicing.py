"""Slicing: a bright box "vertebral body" at a known world position must land at the slice centre,
superior up and anterior left, whatever the array orientation, spacing or obliquity; plus the real
VerSe sample (centroids on their own labels after resampling) and the real 3 mm CT."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from latentstore.ingest import CutSlice, ScanSource, SlicingConfig, Volume, cut_slices, load_scan, resample_iso
from latentstore.ingest.centroids import read_centroid_file

BODY_C = np.array([5.0, -10.0, 20.0])  # world RAS mm of the phantom's vertebral body centre
BODY, POSTERIOR, SUPERIOR, FAT = 1000, 400, 600, -100  # HU
EXTENT = np.array([[-30.0, 40.0], [-70.0, 50.0], [-40.0, 80.0]])  # world box covered by the volumes


def phantom_hu(world: np.ndarray) -> np.ndarray:
    """HU at world RAS points (..., 3): a 30x30x24 mm body box at BODY_C, a posterior-element block
    behind it and the next vertebra above it; fat elsewhere."""
    d = world - BODY_C
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    hu = np.full(world.shape[:-1], FAT, np.int16)
    hu[(abs(x) <= 15) & (abs(y) <= 15) & (abs(z) <= 12)] = BODY
    hu[(abs(x) <= 4) & (y >= -35) & (y <= -20) & (abs(z) <= 5)] = POSTERIOR  # posterior = -A
    hu[(abs(x) <= 15) & (abs(y) <= 15) & (z >= 18) & (z <= 40)] = SUPERIOR
    return hu


def grid_affine(codes: str, zooms, tilt_deg: float = 0.0) -> tuple[np.ndarray, tuple[int, ...]]:
    """Affine and shape of an array with axis codes `codes` (e.g. "PIR") and voxel sizes `zooms`
    covering EXTENT; `tilt_deg` rotates the grid about world x (an oblique scan)."""
    axis_of = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    aff = np.diag([0.0, 0.0, 0.0, 1.0])
    shape = []
    for i, (code, zoom) in enumerate(zip(codes, zooms)):
        w, sign = axis_of[code]
        aff[w, i] = sign * zoom
        aff[w, 3] = EXTENT[w, 0] if sign > 0 else EXTENT[w, 1]
        shape.append(int(np.ceil((EXTENT[w, 1] - EXTENT[w, 0]) / zoom)) + 1)
    if tilt_deg:
        t = np.radians(tilt_deg)
        rot = np.eye(4)
        rot[1:3, 1:3] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        centre = EXTENT.mean(axis=1)
        shift = np.eye(4)
        shift[:3, 3] = centre - rot[:3, :3] @ centre  # rotate about the middle of the box
        aff = shift @ rot @ aff
    return aff, tuple(shape)


def phantom_array(codes: str, zooms, tilt_deg: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    aff, shape = grid_affine(codes, zooms, tilt_deg)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return phantom_hu(ijk @ aff[:3, :3].T + aff[:3, 3]), aff


def dummy_source(ct: Path = Path("phantom.nii.gz")) -> ScanSource:
    return ScanSource("phantom", "nifti", ct, (ct,), None, None, "p")


def phantom_volume(codes="RAS", zooms=(1, 1, 1), tilt_deg=0.0, centroids=None) -> Volume:
    hu, aff = phantom_array(codes, zooms, tilt_deg)
    return Volume(hu, aff, centroids or {20: BODY_C.copy()}, dummy_source())


def assert_body_centred(img: np.ndarray, size: int = 96, tol_px: float = 1.0, blur_mm: float = 1.0):
    """Body at the centre, the posterior block right of it (column 0 anterior), the next vertebra above.
    `blur_mm`: the coarsest source voxel; linear interpolation softens edges by up to that much."""
    c = size // 2
    rows, cols = np.nonzero(img > (BODY + SUPERIOR) / 2)
    assert abs(rows.mean() - c) <= tol_px and abs(cols.mean() - c) <= tol_px, (rows.mean(), cols.mean())
    # The box is 24 mm (rows) x 30 mm (columns): 25 x 31 pixels on a 1 mm grid.
    assert 24 - 2 * blur_mm <= rows.max() - rows.min() <= 25, rows.max() - rows.min()
    assert 30 - 2 * blur_mm <= cols.max() - cols.min() <= 31, cols.max() - cols.min()
    # The posterior block spans 20-35 mm behind the centre, 5 mm up and down; the vertebra above
    # 18-40 mm above it. Mirror images of both regions must be fat.
    behind, before = img[c - 2 : c + 3, c + 23 : c + 33], img[c - 2 : c + 3, c - 32 : c - 22]
    assert abs(behind.mean() - POSTERIOR) < 30 and abs(before.mean() - FAT) < 5, "posterior must be on the right"
    above, below = img[c - 37 : c - 21, c - 10 : c + 11], img[c + 21 : c + 37, c - 10 : c + 11]
    assert abs(above.mean() - SUPERIOR) < 30 and abs(below.mean() - FAT) < 5, "superior must be at the top"


@pytest.mark.parametrize(
    "codes, zooms, tilt",
    [
        ("RAS", (1, 1, 1), 0),
        ("LPS", (0.8, 0.8, 2.5), 0),
        ("PIR", (1, 1, 2), 0),
        ("ILA", (3, 0.7, 1.2), 0),
        ("SRP", (1.5, 1.25, 1), 0),
        ("LPS", (0.9, 0.9, 1.5), 8),
    ],
)
def test_body_lands_centred_anterior_left(codes, zooms, tilt):
    vol = phantom_volume(codes, zooms, tilt)
    slices, skipped = cut_slices(vol, SlicingConfig())
    assert skipped == [] and len(slices) == 1
    s = slices[0]
    assert s.level == 20 and s.image.shape == (96, 96) and s.image.dtype == np.int16
    np.testing.assert_allclose(s.centroid_mm, BODY_C)
    assert abs(int(s.image[48, 48]) - BODY) < 5
    assert_body_centred(s.image, blur_mm=max(zooms))


def test_orientations_give_the_same_slice():
    """Reorientation is exact (no interpolation) on a 1 mm grid: PIR and RAS slices are identical."""
    a = cut_slices(phantom_volume("RAS"), SlicingConfig())[0][0].image
    b = cut_slices(phantom_volume("PIR"), SlicingConfig())[0][0].image
    c = cut_slices(phantom_volume("ILA", (1, 1, 1)), SlicingConfig())[0][0].image
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_superior_to_inferior_order_and_outside_centroids_skipped():
    up = np.array([0.0, 0.0, 30.0])
    centroids = {21: BODY_C - up, 19: BODY_C + up, 20: BODY_C, 28: BODY_C + up / 2, 22: BODY_C + [0, 0, -500.0]}
    slices, skipped = cut_slices(phantom_volume(centroids=centroids), SlicingConfig())
    assert [s.level for s in slices] == [19, 28, 20, 21]  # T12, T13, L1, L2
    assert len(skipped) == 1 and skipped[0][0] == 22 and "outside" in skipped[0][1]
    # Every slice is centred on its own centroid: the L1 body appears 30 rows lower in T12's slice.
    t12 = slices[0].image
    assert abs(int(t12[48 + 30, 48]) - BODY) < 5 and int(t12[48, 48]) != BODY


def test_thick_slice_averages_planes_and_changes_hash():
    vol = phantom_volume()
    thin, thick = SlicingConfig(), SlicingConfig(thickness_mm=5)
    assert thin.hash != thick.hash and thin.hash == SlicingConfig().hash
    # A centroid 3 mm beside the posterior block's midline (4 mm half-width): of 5 planes, 1 is outside.
    beside = {20: BODY_C + [3.0, 0, 0]}
    img_thin = cut_slices(Volume(vol.hu, vol.affine, beside, vol.source), thin)[0][0].image
    img_thick = cut_slices(Volume(vol.hu, vol.affine, beside, vol.source), thick)[0][0].image
    row, col = 48, 48 + 27  # inside the posterior block
    assert img_thin[row, col] == POSTERIOR
    assert img_thick[row, col] == round((4 * POSTERIOR + FAT) / 5)
    assert img_thick[48, 48] == BODY and np.array_equal(img_thick[:, :40], img_thin[:, :40])  # body planes agree


def test_slicing_config_validation_and_json():
    cfg = SlicingConfig(size=64, thickness_mm=3, order=3)
    assert SlicingConfig.from_dict(json.loads(cfg.to_json())) == cfg
    for bad in ({"thickness_mm": 2}, {"spacing_mm": 0.0}, {"order": 7}, {"size": 3}):
        with pytest.raises(ValueError):
            SlicingConfig(**bad)
    with pytest.raises(ValueError, match="unknown"):
        SlicingConfig.from_dict({"sizee": 96})


def test_pixels_are_rounded_and_clipped_int16():
    hu, aff = phantom_array("RAS", (1, 1, 1))
    vol = Volume(hu.astype(np.float32) * 100 + 0.4, aff, {20: BODY_C}, dummy_source())  # 100000 HU: beyond int16
    img = cut_slices(vol, SlicingConfig())[0][0].image
    assert img.dtype == np.int16 and img[48, 48] == 32767 and img[0, 0] == round(FAT * 100 + 0.4)


def test_outside_field_of_view_pads_minus_1024():
    vol = phantom_volume()
    edge = {20: np.array([5.0, -10.0, EXTENT[2, 1] - 5])}  # 5 mm below the top of the volume
    img = cut_slices(Volume(vol.hu, vol.affine, edge, vol.source), SlicingConfig())[0][0].image
    assert np.all(img[:40] == -1024) and np.all(img[50:] > -1024)


def test_resample_iso_reorients_and_maps_world_points():
    hu, aff = phantom_array("PIR", (1, 1, 2))
    iso, iso_aff = resample_iso((hu, aff), 1.0, order=0, pad=0)
    assert np.allclose(np.diag(iso_aff)[:3], 1.0) and nib.aff2axcodes(iso_aff) == ("R", "A", "S")
    ijk = np.rint(np.linalg.inv(iso_aff)[:3] @ [*BODY_C, 1]).astype(int)
    assert iso[tuple(ijk)] == BODY and iso.dtype == hu.dtype
    # Anterior is +y in the output array: 20 mm posterior of the body centre lies the posterior block.
    assert iso[ijk[0], ijk[1] - 27, ijk[2]] == POSTERIOR


# ---------------------------------------------------------------------------------------------------
# Real data


def test_real_verse_centroids_land_on_their_labels(real_data):
    """The real VerSe sample (PIR, 1x1x2 mm, oblique): every JSON centroid, mapped through world
    coordinates, hits its own label in the mask resampled to 1 mm isotropic (nearest neighbour)."""
    msk = nib.load(real_data / "verse-sample" / "sub-verse004_seg-vert_msk.nii.gz")
    labels = np.rint(np.asanyarray(msk.dataobj)).astype(np.int16)
    ctd = real_data / "verse-sample" / "sub-verse004_seg-subreg_ctd.json"
    centroids, skipped = read_centroid_file(ctd, msk.affine, labels.shape)
    assert sorted(centroids) == list(range(16, 25)) and skipped == []
    iso, iso_aff = resample_iso((labels, msk.affine), 1.0, order=0, pad=0)
    inv = np.linalg.inv(iso_aff)
    for label, c in centroids.items():
        ijk = np.rint(inv[:3, :3] @ c + inv[:3, 3]).astype(int)
        assert iso[tuple(ijk)] == label, f"centroid of {label} lands on {iso[tuple(ijk)]}"


def test_real_verse_slices_centre_on_the_body(real_data):
    """Cut the real mask as if it were a CT: the slice centre is on the vertebra's own label and the
    label's anterior edge (the body's front) is left of the centre, its posterior elements right."""
    msk = nib.load(real_data / "verse-sample" / "sub-verse004_seg-vert_msk.nii.gz")
    labels = np.rint(np.asanyarray(msk.dataobj)).astype(np.int16)
    ctd = real_data / "verse-sample" / "sub-verse004_seg-subreg_ctd.json"
    centroids, _ = read_centroid_file(ctd, msk.affine, labels.shape)
    vol = Volume(labels, msk.affine, centroids, dummy_source())
    slices, skipped = cut_slices(vol, SlicingConfig(order=0, pad_hu=0))
    assert [s.level for s in slices] == list(range(16, 25)) and skipped == []
    for s in slices:
        assert s.image[48, 48] == s.level
        _, cols = np.nonzero(s.image == s.level)
        assert 48 - cols.min() + 10 < cols.max() - 48, "posterior elements must extend to the right"
        above = {int(v) for v in s.image[: 48 - 15, 38:58].ravel()}
        below = {int(v) for v in s.image[48 + 15 :, 38:58].ravel()}
        if s.level > 16:
            assert s.level - 1 in above and s.level - 1 not in below, "the vertebra above must be at the top"
        if s.level < 24:
            assert s.level + 1 in below and s.level + 1 not in above


def test_real_ct_nifti_loads_and_resamples_to_1mm(real_data, tmp_path):
    ct = real_data / "ct-nifti" / "example_ct.nii.gz"
    sidecar = tmp_path / "example_ct_centroids.csv"
    img = nib.load(ct)
    middle = img.affine @ [*(np.array(img.shape) / 2), 1]
    sidecar.write_text(f"label,x,y,z\nL3,{middle[0]},{middle[1]},{middle[2]}\n")
    vol = load_scan(ScanSource("example_ct", "nifti", ct, (ct,), sidecar, None, "p"))
    assert vol.hu.dtype == np.int16 and vol.hu.shape == (122, 101, 112)
    np.testing.assert_allclose(vol.spacing_mm, 3.0)
    assert vol.hu.min() == -1024 and 1000 < vol.hu.max() < 4000  # clipped air, cortical bone
    # Resample the middle 40^3 voxels (120 mm, the lumbar spine) to 1 mm: the whole volume works the
    # same way but costs seconds.
    crop = (slice(40, 80), slice(30, 70), slice(40, 80))
    part_affine = vol.affine.copy()
    part_affine[:3, 3] = vol.affine[:3, :3] @ [40, 30, 40] + vol.affine[:3, 3]
    iso, iso_aff = resample_iso((vol.hu[crop], part_affine), 1.0)
    np.testing.assert_allclose(np.diag(iso_aff)[:3], 1.0)
    assert iso.shape == (118, 118, 118) and iso.dtype == np.int16
    assert iso.min() >= -1024 and iso.max() > 1000  # bone
    assert -200 < np.median(iso[iso > -500]) < 200, "soft tissue dominates the body"
    # The same world point has the same HU on both grids (a 3 mm voxel centre is a 1 mm grid point).
    for p in ([40, 30, 40], [60, 50, 60], [79, 69, 79]):
        world = vol.affine[:3, :3] @ p + vol.affine[:3, 3]
        a = np.rint(np.linalg.inv(iso_aff)[:3] @ [*world, 1]).astype(int)
        assert iso[tuple(a)] == vol.hu[tuple(p)]
    slices, _ = cut_slices(vol, SlicingConfig())
    assert isinstance(slices[0], CutSlice) and slices[0].image.shape == (96, 96)


def test_equal_configs_hash_alike_whatever_the_number_types():
    from latentstore.ingest import SlicingConfig

    assert SlicingConfig(thickness_mm=1, spacing_mm=1, order=1).hash == SlicingConfig().hash
    assert SlicingConfig(thickness_mm=3).hash != SlicingConfig().hash
