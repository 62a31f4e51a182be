"""`latentstore synth`: a synthetic spine CT archive with known Genant grades.

Patients with a curved thoracolumbar spine (bodies with cortical shell, endplates and trabecular core,
discs, posterior elements, soft tissue, fat and air), fractures (wedge, biconcave, crush) graded from
heights measured on the rasterised mask, written in the VerSe layout with exact affines, varied spacing
and orientation, ground-truth tables, optional DICOM studies, previews and a contact sheet.

    from latentstore.synth import synth_archive
    summary = synth_archive("archive/", patients=20, seed=0, dicom=True)

Modules: `config` (SynthConfig), `anatomy` (one vertebra as signed distance functions), `patient`
(sampling, fracture solving, spine layout, acquisition), `phantom` + `tissue` (rasterisation, HU),
`measure` (heights and Genant grade from a mask), `write` (VerSe files and tables), `dicom`, `sheet`,
`archive` (orchestration).
"""

from .archive import assign_splits, synth_archive
from .config import SynthConfig
from .measure import genant_grade, measure_scan

__all__ = ["SynthConfig", "assign_splits", "genant_grade", "measure_scan", "synth_archive"]
