"""Development tools: the Mosquitto helper (`broker`), `make run`'s stack (`stack`) and
the Tasmota device simulator behind `sepl-adapter simulate` (`simulate`).

They sit above the runtime package `adapter` and may import from it; `adapter` never
imports them, except its command line (`adapter/cli.py`), which dispatches `simulate`.
The package ships in the wheel so that an installed `sepl-adapter simulate` works.
"""
