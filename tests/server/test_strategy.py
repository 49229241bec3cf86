"""Server-side policy combination."""

from __future__ import annotations

from fedaug.augment import Policy
from fedaug.augment.candidates import candidate_policies
from fedaug.server.strategy import combine_policies


def test_mergeable_policies_are_averaged_by_examples():
    a = Policy.from_json('{"schema_version":1,"modality":"image","ops":[{"op":"rotate","p":0.2,"limit":10.0}],"sampling":null}')
    b = Policy.from_json('{"schema_version":1,"modality":"image","ops":[{"op":"rotate","p":0.8,"limit":20.0}],"sampling":null}')
    merged = combine_policies([a, b], [1.0, 3.0])
    rot = merged.to_dict()["ops"][0]
    assert abs(rot["p"] - 0.65) < 1e-9 and abs(rot["limit"] - 17.5) < 1e-9


def test_unmergeable_policies_fall_back_to_a_weighted_vote():
    cands = candidate_policies(Policy.default("image"))
    sampling = next(c for c in cands if c.sampling is not None)
    plain = cands[0]
    chosen = combine_policies([plain, sampling, sampling], [100.0, 30.0, 40.0])
    assert chosen.to_json() == plain.to_json()  # 100 examples beat 70
    chosen = combine_policies([plain, sampling, sampling], [50.0, 30.0, 40.0])
    assert chosen.to_json() == sampling.to_json()
