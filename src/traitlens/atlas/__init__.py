"""The trait atlas: which part tells species A from species B, across a whole collection, and how sure we are.

>>> from traitlens.atlas import build_atlas
>>> atlas = build_atlas(model, test_set, pairs="siblings", parts="masks", traits=traits)
>>> atlas.write("atlas/")                         # atlas.json, atlas.csv
>>> precision_table(atlas, traits)["finer"]       # against the pair table's diagnostic parts

Evidence per pair and part (:mod:`~traitlens.atlas.evidence`): Finer-CAM energy share with the other species
as reference against the part's area share, Grad-CAM as the control, Prompt-CAM/INTR head attention when the
model has heads, and an intervention (removing the part against a random region of the same area); bootstrap
intervals and the combined ranking in :mod:`~traitlens.atlas.ranking`. The bulk command is ``traitlens
atlas`` (:mod:`traitlens.runs.atlas_job`); the HTML cards are drawn by :mod:`traitlens.report.atlas`.
"""

from traitlens.atlas.build import build_atlas, denormalise, partner_matrix, propagate_dataset, records
from traitlens.atlas.cards import specimen_map
from traitlens.atlas.evidence import REMOVALS, EvidenceOptions, image_evidence, resolved_settings
from traitlens.atlas.groundtruth import precision_table
from traitlens.atlas.pairs import PAIR_MODES, parse_pairs, partner_table, select_pairs
from traitlens.atlas.parts import LabelledSupport, PartPropagator, check_support_ids, part_names_from
from traitlens.atlas.ranking import assemble
from traitlens.atlas.result import FIGURES, SOURCES, Atlas, PairEvidence, PartEvidence, Stat, load_atlas

__all__ = ["build_atlas", "Atlas", "PairEvidence", "PartEvidence", "Stat", "load_atlas", "EvidenceOptions",
           "image_evidence", "resolved_settings", "records", "partner_matrix", "propagate_dataset", "denormalise", "assemble",
           "select_pairs", "parse_pairs", "partner_table", "PAIR_MODES", "REMOVALS", "LabelledSupport",
           "PartPropagator", "check_support_ids", "part_names_from", "precision_table", "specimen_map",
           "FIGURES", "SOURCES"]
