"""The local broker's cluster id goes to `kafka-storage format -t <id>`: an id that begins with "-"
is read as an option (argparse: "argument --cluster-id/-t: expected one argument") and the format
fails. Base64 of a random UUID begins with "-" one time in 64: a fresh-clone run of the suite hit it
(tests/e2e/test_secured_kafka.py[SSL]). Kafka's own Uuid.randomUuid draws again in that case."""

from __future__ import annotations

import base64

from deploy.local import base64_uuid


def test_a_cluster_id_never_begins_with_a_dash_and_is_a_22_character_base64_uuid():
    ids = [base64_uuid() for _ in range(20_000)]  # (63/64) ** 20000: a dash-first id is all but certain to be drawn
    assert not [cluster_id for cluster_id in ids if cluster_id.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(cluster_id + "==")) == 16 and len(cluster_id) == 22 for cluster_id in ids)
    assert len(set(ids)) == len(ids)
