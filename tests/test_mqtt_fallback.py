"""MQTT 5 with a 3.1.1 fallback, against a real broker that speaks only 3.1.1 (amqtt)."""

from __future__ import annotations

from pathlib import Path

from appliance.sim.broker import Amqtt
from appliance.sim.mdm import MdmListener
from appliance.sim.substation import Substation
from tests.conftest import write_config
from tests.test_end_to_end import CONFIG, assert_mdm_holds_exactly_the_store, silence_meters_and_drain


def test_a_broker_that_cannot_speak_mqtt5_gets_3_1_1_and_every_reading(tmp_path: Path) -> None:
    # amqtt stays silent on an MQTT 5 CONNECT that carries a will (ours does): after two
    # unanswered attempts (keepalive 5 s each) the link falls back.
    with Amqtt(tmp_path / "amqtt") as broker:
        base = write_config(tmp_path / "hes.toml", CONFIG.replace("[mqtt]\n", "[mqtt]\nkeepalive_s = 5\n"))
        with Substation(tmp_path / "run", base, broker=(broker.host, broker.port)) as substation:
            listener = MdmListener(broker.host, broker.port, substation.config.topic(), mqtt5=False)
            with listener as mdm:
                substation.start_daemon()
                assert substation.wait_for(lambda: len(mdm.snapshot()) >= 3, 30), substation.log.read_text()
                silence_meters_and_drain(substation)
                assert substation.stop_daemon() == 0
                assert_mdm_holds_exactly_the_store(substation, mdm)
                assert {m.content_type for m in mdm.snapshot()} == {None}  # 3.1.1 has no properties
            assert "falling back to 3.1.1" in substation.log.read_text()
