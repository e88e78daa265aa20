"""Tariffs, cost apportionment, billing determinants and prepay accounts (docs/tariffs.md).

Pure where possible: model.py (the tariff and its calendar), loader.py (TOML and validation),
apportion.py (interval energy into costs per period and block), billing.py (determinants and the
bill, with the one rounding rule), prepay.py (the account's state machine), export.py (CSV and CIM
XML for an ERP). service.py is the I/O: it runs them over the store (store/tariffs.py).
"""
