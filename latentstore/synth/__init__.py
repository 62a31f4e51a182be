"""`latentstore synth`: a synthetic spine CT archive with known Genant grades.

Patients with a curved thoracolumbar spine (bodies with an irregular cortical shell, bright endplates and
a trabecular core with vertical streaks, discs, posterior elements, soft tissue with fat, muscle and bowel
gas, correlated CT noise), fractures (wedge, biconcave, crush; more frequent at T11-L2 and in osteoporotic
bone) graded from heights measured on the rasterised mask, and what is no fracture: degenerated discs
(some with vacuum gas), osteophytes, Schmorl's nodes, short or developmentally wedged vertebrae that
measure G0, pedicle screws with metal streaks in a few scans; written in the VerSe layout with exact
affines, varied spacing and orientation, ground-truth tables, optional DICOM studies, previews and a
contact sheet.

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
