"""Meter models: declarative maps from a meter's registers or objects to CIM ReadingTypes.

A model is data, not code: adding a meter type means adding an entry to `catalog.py`.
"""

from __future__ import annotations

from appliance.collect.meters.catalog import MODELS
from appliance.collect.meters.dlms import DlmsModel
from appliance.collect.meters.modbus import ModbusModel
from appliance.model import Protocol

MeterModel = ModbusModel | DlmsModel


def get_model(name: str) -> MeterModel:
    """The model called `name`; KeyError names the models there are."""
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown meter model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def models_for(protocol: Protocol) -> list[str]:
    """Names of the models that speak `protocol`, for help texts and config errors."""
    return sorted(name for name, model in MODELS.items() if model.protocol is protocol)
