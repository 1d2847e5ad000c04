"""A corpus of real-world device traffic for the end-to-end tests.

Each `CorpusDevice` is one physical device of a supported family (Tasmota, Shelly Gen1,
Shelly Gen2+, ESPHome, Zigbee2MQTT, OpenMQTTGateway BLE): the MQTT messages it publishes, in
order, and the readings the adapter must hold for it after all of them (the newest value of
each reading wins; a partial update changes only what it carries), named and converted by the
adapter's conventions (docs/mappings.md; energy in kWh, on/off as 1/0).

Payloads are copied from the families' own documentation, from captures quoted in public
issues, or from public device captures; where a source only shows the shape, the payload is
built in that shape and its comment says so ("shape from ..."). Every device cites its
sources in a comment and in `source`. The expectations were written from those sources and
the conventions, not from the adapter's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Message:
    topic: str
    payload: str
    retain: bool = False


@dataclass(frozen=True)
class CorpusDevice:
    label: str  # e.g. "Shelly 2.5 (Gen1)"
    family: str  # tasmota | shelly | esphome | z2m | omg
    source: str  # citation(s)
    messages: tuple[Message, ...]
    uri: str  # the SEPL device uri
    readings: dict[str, tuple[float, str | None]]  # name -> (value, unit) after all messages
    channels: dict[str, bool] = field(default_factory=dict)  # on/off per channel reading


# ---- Tasmota: default FullTopic %prefix%/%topic%/ (tele/<t>/SENSOR|STATE|LWT, stat/<t>/POWER<n>)

# tasmota/docs docs/devices/Sonoff-Pow-R2.md (tele/pow1/SENSOR, copied verbatim);
# STATE: shape from tasmota/docs docs/ADC.md (tele/tasmota/STATE example) with POWER ON
# and Wifi.Signal; LWT and stat/<t>/POWER from docs/MQTT.md.
TASMOTA_POW_R2 = CorpusDevice(
    label="Sonoff POW R2 (Tasmota)",
    family="tasmota",
    source=(
        "tasmota/docs docs/devices/Sonoff-Pow-R2.md (tele/pow1/SENSOR, copied verbatim); STATE: "
        "shape from tasmota/docs docs/ADC.md (tele/tasmota/STATE example) with POWER ON and "
        "Wifi.Signal; LWT and stat/<t>/POWER from docs/MQTT.md."
    ),
    messages=(
        Message("tele/pow1/LWT", "Online", retain=True),
        Message(
            "tele/pow1/SENSOR",
            (
                '{"Time":"2018-02-15T17:37:10","ENERGY":{"TotalStartTime":"2018-11-14T18:39:40",'
                '"Total":6.294,"Yesterday":5.340,"Today":0.954,"Period":217,"Power":2635,'
                '"ApparentPower":2650,"ReactivePower":282,"Factor":0.99,"Voltage":227,'
                '"Current":11.661}}'
            ),
        ),
        Message(
            "tele/pow1/STATE",
            (
                '{"Time":"2018-02-15T17:37:10","Uptime":"0T18:36:12","UptimeSec":66972,"Heap":28,'
                '"SleepMode":"Dynamic","Sleep":50,"LoadAvg":19,"MqttCount":6,"POWER":"ON",'
                '"Wifi":{"AP":1,"SSId":"Tasmota","BSSId":"00:00:00:00:00:00","Channel":13,'
                '"RSSI":100,"Signal":-48,"LinkCount":1,"Downtime":"0T00:00:06"}}'
            ),
        ),
        Message("stat/pow1/POWER", "ON"),
    ),
    uri="tasmota:pow1",
    readings={
        "energy": (6.294, "kWh"),
        "energy_yesterday": (5.34, "kWh"),
        "energy_today": (0.954, "kWh"),
        "energy_period": (217 / 1000, "kWh"),
        "power": (2635, "W"),
        "apparent_power": (2650, "VA"),
        "reactive_power": (282, "var"),
        "power_factor": (0.99, None),
        "voltage": (227, "V"),
        "current": (11.661, "A"),
        "state": (1, None),
        "uptime": (66972, "s"),
        "rssi": (100, "%"),
        "signal": (-48, "dBm"),
    },
    channels={"state": True},
)

# shape from tasmota/docs docs/AM2301.md (AM2301 object) and docs/DS18x20.md (DS18B20
# object with Id); both sensors on one device. Key order follows Tasmota's sensor driver
# order (xsns_05_ds18x20 reports before xsns_06_dht), so DS18B20 comes first and keeps
# `temperature`; AM2301's becomes `temperature_am2301`. DewPoint as in docs/SCD4x.md.
TASMOTA_TH16_AM2301_DS18B20 = CorpusDevice(
    label="Sonoff TH16 with AM2301 and DS18B20 (Tasmota)",
    family="tasmota",
    source=(
        "shape from tasmota/docs docs/AM2301.md (AM2301 object) and docs/DS18x20.md (DS18B20 "
        "object with Id); both sensors on one device. Key order follows Tasmota's sensor driver "
        "order (xsns_05_ds18x20 reports before xsns_06_dht), so DS18B20 comes first and keeps "
        "`temperature`; AM2301's becomes `temperature_am2301`. DewPoint as in docs/SCD4x.md."
    ),
    messages=(
        Message("tele/th16_boiler/LWT", "Online", retain=True),
        Message(
            "tele/th16_boiler/SENSOR",
            (
                '{"Time":"2024-01-14T07:30:00","DS18B20":{"Id":"0316856449FF",'
                '"Temperature":54.3},"AM2301":{"Temperature":19.6,"Humidity":55.1,'
                '"DewPoint":10.4},"TempUnit":"C"}'
            ),
        ),
        Message("stat/th16_boiler/POWER", "ON"),
    ),
    uri="tasmota:th16_boiler",
    readings={
        "temperature": (54.3, "°C"),
        "temperature_am2301": (19.6, "°C"),
        "humidity": (55.1, "%"),
        "dew_point": (10.4, "°C"),
        "state": (1, None),
    },
    channels={"state": True},
)

# SENSOR copied from issue grzegorz914/homebridge-tasmota-control#8 (TH16, two
# DS18x20); same shape as tasmota/docs docs/DS18x20.md (DS18B20-1..3 example).
TASMOTA_TH10_TWO_DS18B20 = CorpusDevice(
    label="Sonoff TH10 with two DS18B20 (Tasmota)",
    family="tasmota",
    source=(
        "SENSOR copied from issue grzegorz914/homebridge-tasmota-control#8 (TH16, two DS18x20); "
        "same shape as tasmota/docs docs/DS18x20.md (DS18B20-1..3 example)."
    ),
    messages=(
        Message("tele/th10_aquarium/LWT", "Online", retain=True),
        Message(
            "tele/th10_aquarium/SENSOR",
            (
                '{"Time":"2024-02-03T12:40:40","DS18B20-1":{"Id":"0316856449FF",'
                '"Temperature":23.7},"DS18B20-2":{"Id":"051686FC27FF","Temperature":23.8},'
                '"TempUnit":"C"}'
            ),
        ),
        Message("stat/th10_aquarium/POWER", "OFF"),
    ),
    uri="tasmota:th10_aquarium",
    readings={
        "temperature_1": (23.7, "°C"),
        "temperature_2": (23.8, "°C"),
        "state": (0, None),
    },
    channels={"state": False},
)

# STATE shape from tasmota/docs docs/TuyaMCU.md (STATE with POWER1..POWER5) and issue
# arendst/Tasmota#1598 (tele/sonoff_4CH_portail/STATE with POWER1..POWER4);
# stat/<t>/POWER2 plain ON/OFF from docs/MQTT.md and the same issue.
TASMOTA_SONOFF_4CH = CorpusDevice(
    label="Sonoff 4CH (Tasmota)",
    family="tasmota",
    source=(
        "STATE shape from tasmota/docs docs/TuyaMCU.md (STATE with POWER1..POWER5) and issue "
        "arendst/Tasmota#1598 (tele/sonoff_4CH_portail/STATE with POWER1..POWER4); "
        "stat/<t>/POWER2 plain ON/OFF from docs/MQTT.md and the same issue."
    ),
    messages=(
        Message("tele/sonoff4ch_garage/LWT", "Online", retain=True),
        Message(
            "tele/sonoff4ch_garage/STATE",
            (
                '{"Time":"2024-03-02T10:15:00","Uptime":"0T01:45:51","UptimeSec":6351,"Heap":27,'
                '"SleepMode":"Dynamic","Sleep":50,"LoadAvg":19,"MqttCount":1,"POWER1":"ON",'
                '"POWER2":"OFF","POWER3":"ON","POWER4":"OFF","Wifi":{"AP":1,"SSId":"HomeNet",'
                '"BSSId":"30:B5:C2:5D:6A:F2","Channel":6,"Mode":"11n","RSSI":24,"Signal":-88,'
                '"LinkCount":1,"Downtime":"0T00:00:08"}}'
            ),
        ),
        Message("stat/sonoff4ch_garage/RESULT", '{"POWER2":"ON"}'),
        Message("stat/sonoff4ch_garage/POWER2", "ON"),
    ),
    uri="tasmota:sonoff4ch_garage",
    readings={
        "state": (1, None),
        "state_2": (1, None),
        "state_3": (1, None),
        "state_4": (0, None),
        "uptime": (6351, "s"),
        "rssi": (24, "%"),
        "signal": (-88, "dBm"),
    },
    channels={"state": True, "state_2": True, "state_3": True, "state_4": False},
)

# tasmota/docs docs/BME280.md (SENSOR example, sent as compact JSON) and
# docs/devices/Sonoff-Basic-and-BME280.md; stat/<t>/POWER from docs/MQTT.md.
TASMOTA_BME280 = CorpusDevice(
    label="Sonoff Basic with BME280 (Tasmota)",
    family="tasmota",
    source=(
        "tasmota/docs docs/BME280.md (SENSOR example, sent as compact JSON) and "
        "docs/devices/Sonoff-Basic-and-BME280.md; stat/<t>/POWER from docs/MQTT.md."
    ),
    messages=(
        Message("tele/basic_bme280/LWT", "Online", retain=True),
        Message(
            "tele/basic_bme280/SENSOR",
            (
                '{"Time":"2019-11-03T19:34:28","BME280":{"Temperature":21.7,"Humidity":66.6,'
                '"Pressure":988.6},"PressureUnit":"hPa","TempUnit":"C"}'
            ),
        ),
        Message("stat/basic_bme280/POWER", "OFF"),
    ),
    uri="tasmota:basic_bme280",
    readings={
        "temperature": (21.7, "°C"),
        "humidity": (66.6, "%"),
        "pressure": (988.6, "hPa"),
        "state": (0, None),
    },
    channels={"state": False},
)

# tasmota/docs docs/ADC.md (tele/tasmota/SENSOR {"ANALOG":{"A0":1024}}, verbatim
# first message; the second is the same shape with a new value); default topic
# tasmota_%06X from docs/MQTT.md.
TASMOTA_ANALOG_A0 = CorpusDevice(
    label="Wemos D1 mini with ANALOG A0 (Tasmota)",
    family="tasmota",
    source=(
        'tasmota/docs docs/ADC.md (tele/tasmota/SENSOR {"ANALOG":{"A0":1024}}, verbatim first '
        "message; the second is the same shape with a new value); default topic tasmota_%06X "
        "from docs/MQTT.md."
    ),
    messages=(
        Message("tele/tasmota_5E2F1A/LWT", "Online", retain=True),
        Message(
            "tele/tasmota_5E2F1A/SENSOR", '{"Time":"2019-01-14T19:36:51","ANALOG":{"A0":1024}}'
        ),
        Message("tele/tasmota_5E2F1A/SENSOR", '{"Time":"2019-01-14T19:41:51","ANALOG":{"A0":512}}'),
    ),
    uri="tasmota:tasmota_5E2F1A",
    readings={
        "analog": (512, None),
    },
)

# tasmota/docs docs/SCD4x.md (SENSOR example verbatim; the page's own topic is `air`,
# stat/air/RESULT). CarbonDioxide is the measured CO2 (`co2`), eCO2 the estimate some
# sensors give (`eco2`).
TASMOTA_SCD40 = CorpusDevice(
    label="SCD40 CO2 sensor (Tasmota)",
    family="tasmota",
    source=(
        "tasmota/docs docs/SCD4x.md (SENSOR example verbatim; the page's own topic is `air`, "
        "stat/air/RESULT). CarbonDioxide is the measured CO2 (co2), eCO2 the estimate (eco2)."
    ),
    messages=(
        Message("tele/air/LWT", "Online", retain=True),
        Message(
            "tele/air/SENSOR",
            (
                '{"Time":"2024-01-01T10:31:09","SCD40":{"CarbonDioxide":1204,"eCO2":1235,'
                '"Temperature":28.8,"Humidity":47.5,"DewPoint":16.5},"TempUnit":"C"}'
            ),
        ),
    ),
    uri="tasmota:air",
    readings={
        "co2": (1204, "ppm"),
        "eco2": (1235, "ppm"),
        "temperature": (28.8, "°C"),
        "humidity": (47.5, "%"),
        "dew_point": (16.5, "°C"),
    },
)

# SENSOR copied from arendst/Tasmota#6160 (arendst, 2019-09-14: tele/shelly25/SENSOR
# with "Power":[23.63,67.17]); template from tasmota/docs docs/devices/Shelly-2.5.md;
# STATE shape from docs/TuyaMCU.md (POWER1/POWER2).
TASMOTA_SHELLY25 = CorpusDevice(
    label="Shelly 2.5 running Tasmota (two-channel ENERGY arrays)",
    family="tasmota",
    source=(
        "SENSOR copied from arendst/Tasmota#6160 (arendst, 2019-09-14: tele/shelly25/SENSOR with "
        '"Power":[23.63,67.17]); template from tasmota/docs docs/devices/Shelly-2.5.md; STATE '
        "shape from docs/TuyaMCU.md (POWER1/POWER2)."
    ),
    messages=(
        Message("tele/shelly25/LWT", "Online", retain=True),
        Message(
            "tele/shelly25/SENSOR",
            (
                '{"Time":"2019-09-14T16:24:49","Switch1":"OFF","Switch2":"OFF",'
                '"ANALOG":{"Temperature":52.5},"ENERGY":{"TotalStartTime":"2019-04-13T18:21:03",'
                '"Total":3.262,"Yesterday":0.000,"Today":0.005,"Period":1.34,"Power":[23.63,'
                '67.17],"ApparentPower":[23.63,67.17],"ReactivePower":[0.00,0.00],"Factor":[1.00,'
                '1.00],"Voltage":229.3,"Current":[0.103,0.293]},"TempUnit":"C"}'
            ),
        ),
        Message(
            "tele/shelly25/STATE",
            (
                '{"Time":"2024-03-02T10:15:00","Uptime":"0T01:45:51","UptimeSec":6351,"Heap":27,'
                '"SleepMode":"Dynamic","Sleep":50,"LoadAvg":19,"MqttCount":1,"POWER1":"ON",'
                '"POWER2":"OFF","Wifi":{"AP":1,"SSId":"HomeNet","BSSId":"30:B5:C2:5D:6A:F2",'
                '"Channel":6,"Mode":"11n","RSSI":62,"Signal":-69,"LinkCount":1,'
                '"Downtime":"0T00:00:04"}}'
            ),
        ),
    ),
    uri="tasmota:shelly25",
    readings={
        "temperature": (52.5, "°C"),
        "energy": (3.262, "kWh"),
        "energy_yesterday": (0.0, "kWh"),
        "energy_today": (0.005, "kWh"),
        "energy_period": (1.34 / 1000, "kWh"),
        "power": (23.63 + 67.17, "W"),
        "power_1": (23.63, "W"),
        "power_2": (67.17, "W"),
        "apparent_power": (23.63 + 67.17, "VA"),
        "apparent_power_1": (23.63, "VA"),
        "apparent_power_2": (67.17, "VA"),
        "reactive_power": (0.0, "var"),
        "reactive_power_1": (0.0, "var"),
        "reactive_power_2": (0.0, "var"),
        "power_factor": (1.0, None),
        "power_factor_1": (1.0, None),
        "power_factor_2": (1.0, None),
        "voltage": (229.3, "V"),
        "current": (0.103 + 0.293, "A"),
        "current_1": (0.103, "A"),
        "current_2": (0.293, "A"),
        "state": (1, None),
        "state_2": (0, None),
        "uptime": (6351, "s"),
        "rssi": (62, "%"),
        "signal": (-69, "dBm"),
    },
    channels={"state": True, "state_2": False},
)

# shape from tasmota/docs docs/AM2301.md with SetOption8 1 (docs/Commands.md:
# Fahrenheit, "TempUnit":"F"); DewPoint as in docs/SCD4x.md.
TASMOTA_AM2301_FAHRENHEIT = CorpusDevice(
    label="Sonoff TH10 with AM2301, TempUnit F (Tasmota)",
    family="tasmota",
    source=(
        "shape from tasmota/docs docs/AM2301.md with SetOption8 1 (docs/Commands.md: Fahrenheit, "
        '"TempUnit":"F"); DewPoint as in docs/SCD4x.md.'
    ),
    messages=(
        Message("tele/shed_th10/LWT", "Online", retain=True),
        Message(
            "tele/shed_th10/SENSOR",
            (
                '{"Time":"2024-02-10T06:00:00","AM2301":{"Temperature":38.5,"Humidity":71.2,'
                '"DewPoint":29.9},"TempUnit":"F"}'
            ),
        ),
    ),
    uri="tasmota:shed_th10",
    readings={
        "temperature": (38.5, "°F"),
        "humidity": (71.2, "%"),
        "dew_point": (29.9, "°F"),
    },
)

# ---- Shelly Gen1: shellies/<id>/... (relay energy in watt-minutes, emeter totals in Wh)

# Gen1 topics from device-conventions.md §2.1 (relay/0, relay/0/power, relay/0/energy in
# watt-minutes, temperature, overtemperature, input/0, online); device id and the
# relay/0/power + temperature topics from a public HA config (code corpus, "Sensor:
# Shelly (MQTT)", shellies/shelly1pm-609CA4/...). Values: shape only.
SHELLY_1PM = CorpusDevice(
    label="Shelly 1PM (Gen1)",
    family="shelly",
    source=(
        "Gen1 topics from device-conventions.md §2.1 (relay/0, relay/0/power, relay/0/energy in "
        "watt-minutes, temperature, overtemperature, input/0, online); device id and the "
        'relay/0/power + temperature topics from a public HA config (code corpus, "Sensor: '
        'Shelly (MQTT)", shellies/shelly1pm-609CA4/...). Values: shape only.'
    ),
    messages=(
        Message("shellies/shelly1pm-609CA4/online", "true", retain=True),
        Message("shellies/shelly1pm-609CA4/relay/0", "on"),
        Message("shellies/shelly1pm-609CA4/relay/0/power", "42.51"),
        Message("shellies/shelly1pm-609CA4/relay/0/energy", "154322"),
        Message("shellies/shelly1pm-609CA4/input/0", "0"),
        Message("shellies/shelly1pm-609CA4/temperature", "47.31"),
        Message("shellies/shelly1pm-609CA4/temperature_f", "117.16"),
        Message("shellies/shelly1pm-609CA4/overtemperature", "0"),
    ),
    uri="shelly:shelly1pm-609CA4",
    readings={
        "state": (1, None),
        "power": (42.51, "W"),
        "energy": (154322 / 60000, "kWh"),
        "input": (0, None),
        "device_temperature": (47.31, "°C"),
        "overtemperature": (0, None),
    },
    channels={"state": True},
)

# Gen1 topics from device-conventions.md §2.1 and docs.thinger.io Shelly Plug S page
# (shellies/{device}/relay/0/power, relay/0; will topic shellyplug-s-C18B12); values
# from the /status capture Luligu/matterbridge-shelly src/mock/shellyplug-s-C38EAB.json
# (meters[0].total 176010 Wmin, temperature 27.14).
SHELLY_PLUG_S = CorpusDevice(
    label="Shelly Plug S (Gen1)",
    family="shelly",
    source=(
        "Gen1 topics from device-conventions.md §2.1 and docs.thinger.io Shelly Plug S page "
        "(shellies/{device}/relay/0/power, relay/0; will topic shellyplug-s-C18B12); values from "
        "the /status capture Luligu/matterbridge-shelly src/mock/shellyplug-s-C38EAB.json "
        "(meters[0].total 176010 Wmin, temperature 27.14)."
    ),
    messages=(
        Message("shellies/shellyplug-s-C38EAB/online", "true", retain=True),
        Message("shellies/shellyplug-s-C38EAB/relay/0", "off"),
        Message("shellies/shellyplug-s-C38EAB/relay/0/power", "0.00"),
        Message("shellies/shellyplug-s-C38EAB/relay/0/energy", "176010"),
        Message("shellies/shellyplug-s-C38EAB/temperature", "27.14"),
        Message("shellies/shellyplug-s-C38EAB/overtemperature", "0"),
    ),
    uri="shelly:shellyplug-s-C38EAB",
    readings={
        "state": (0, None),
        "power": (0.0, "W"),
        "energy": (176010 / 60000, "kWh"),
        "device_temperature": (27.14, "°C"),
        "overtemperature": (0, None),
    },
    channels={"state": False},
)

# Gen1 topics from device-conventions.md §2.1 (relay/<n>, relay/<n>/power,
# relay/<n>/energy, temperature, voltage, overtemperature); relay 1 topics as in the
# pastebin.com/zWaNqRer HA config (shellies/shellyswitch-YYYYYY/relay/1); id, temperature
# and voltage from Luligu/matterbridge-shelly src/mock/shellyswitch25-3494547BF36C.json.
SHELLY_25_GEN1 = CorpusDevice(
    label="Shelly 2.5 (Gen1, two relays)",
    family="shelly",
    source=(
        "Gen1 topics from device-conventions.md §2.1 (relay/<n>, relay/<n>/power, "
        "relay/<n>/energy, temperature, voltage, overtemperature); relay 1 topics as in the "
        "pastebin.com/zWaNqRer HA config (shellies/shellyswitch-YYYYYY/relay/1); id, temperature "
        "and voltage from Luligu/matterbridge-shelly src/mock/shellyswitch25-3494547BF36C.json."
    ),
    messages=(
        Message("shellies/shellyswitch25-3494547BF36C/online", "true", retain=True),
        Message("shellies/shellyswitch25-3494547BF36C/relay/0", "on"),
        Message("shellies/shellyswitch25-3494547BF36C/relay/0/power", "61.20"),
        Message("shellies/shellyswitch25-3494547BF36C/relay/0/energy", "98765"),
        Message("shellies/shellyswitch25-3494547BF36C/relay/1", "off"),
        Message("shellies/shellyswitch25-3494547BF36C/relay/1/power", "0.00"),
        Message("shellies/shellyswitch25-3494547BF36C/relay/1/energy", "4321"),
        Message("shellies/shellyswitch25-3494547BF36C/temperature", "51.61"),
        Message("shellies/shellyswitch25-3494547BF36C/overtemperature", "0"),
        Message("shellies/shellyswitch25-3494547BF36C/voltage", "240.98"),
    ),
    uri="shelly:shellyswitch25-3494547BF36C",
    readings={
        "state": (1, None),
        "power": (61.2, "W"),
        "energy": (98765 / 60000, "kWh"),
        "state_1": (0, None),
        "power_1": (0.0, "W"),
        "energy_1": (4321 / 60000, "kWh"),
        "device_temperature": (51.61, "°C"),
        "overtemperature": (0, None),
        "voltage": (240.98, "V"),
    },
    channels={"state": True, "state_1": False},
)

# emeter/0 power/reactive_power/voltage/total/total_returned values copied from the
# MQTT captures in issues enesbcs/shellyteacher4domo#5 (power 611.53, reactive_power
# 382.27, voltage 238.85) and enesbcs/Shelly_MQTT#79 (shellyem-D3B45C: voltage 224.3,
# total 64541.0, total_returned 0.0); emeter/<i>/energy and returned_energy (watt-minute
# counters the EM also publishes) listed in enesbcs/Shelly_MQTT#46. The EM's documented
# energy reading is `energy` from total (Wh -> kWh), not from emeter/<i>/energy.
SHELLY_EM_GEN1 = CorpusDevice(
    label="Shelly EM (Gen1, emeter 0 and 1)",
    family="shelly",
    source=(
        "emeter/0 power/reactive_power/voltage/total/total_returned values copied from the MQTT "
        "captures in issues enesbcs/shellyteacher4domo#5 (power 611.53, reactive_power 382.27, "
        "voltage 238.85) and enesbcs/Shelly_MQTT#79 (shellyem-D3B45C: voltage 224.3, total "
        "64541.0, total_returned 0.0); emeter/<i>/energy and returned_energy (watt-minute "
        "counters the EM also publishes) listed in enesbcs/Shelly_MQTT#46. The EM's documented "
        "energy reading is `energy` from total (Wh -> kWh), not from emeter/<i>/energy."
    ),
    messages=(
        Message("shellies/shellyem-D3B45C/online", "true", retain=True),
        Message("shellies/shellyem-D3B45C/relay/0", "off"),
        Message("shellies/shellyem-D3B45C/emeter/0/power", "611.53"),
        Message("shellies/shellyem-D3B45C/emeter/0/reactive_power", "382.27"),
        Message("shellies/shellyem-D3B45C/emeter/0/voltage", "224.3"),
        Message("shellies/shellyem-D3B45C/emeter/0/total", "64541.0"),
        Message("shellies/shellyem-D3B45C/emeter/0/total_returned", "0.0"),
        Message("shellies/shellyem-D3B45C/emeter/0/energy", "611"),
        Message("shellies/shellyem-D3B45C/emeter/0/returned_energy", "0"),
        Message("shellies/shellyem-D3B45C/emeter/1/power", "0.00"),
        Message("shellies/shellyem-D3B45C/emeter/1/reactive_power", "0.00"),
        Message("shellies/shellyem-D3B45C/emeter/1/voltage", "224.3"),
        Message("shellies/shellyem-D3B45C/emeter/1/total", "0.0"),
        Message("shellies/shellyem-D3B45C/emeter/1/total_returned", "0.0"),
    ),
    uri="shelly:shellyem-D3B45C",
    readings={
        "state": (0, None),
        "power": (611.53, "W"),
        "reactive_power": (382.27, "var"),
        "voltage": (224.3, "V"),
        "energy": (64541.0 / 1000, "kWh"),
        "energy_returned": (0.0, "kWh"),
        "energy_counter": (611 / 60000, "kWh"),  # watt-minutes
        "energy_returned_counter": (0.0, "kWh"),
        "power_1": (0.0, "W"),
        "reactive_power_1": (0.0, "var"),
        "voltage_1": (224.3, "V"),
        "energy_1": (0.0, "kWh"),
        "energy_returned_1": (0.0, "kWh"),
    },
    channels={"state": False},
)

# relay/0 and emeter/0..2 power/pf/current/voltage copied from the MQTT capture in
# enesbcs/Shelly_MQTT#64 (shellyem3-68C63AFAF952); total/total_returned (Wh) shape
# from the capture in iobroker-community-adapters/ioBroker.shelly#648
# (emeter/0/total 21831.1, emeter/0/total_returned 53.0).
SHELLY_3EM_GEN1 = CorpusDevice(
    label="Shelly 3EM (Gen1, emeter 0, 1, 2)",
    family="shelly",
    source=(
        "relay/0 and emeter/0..2 power/pf/current/voltage copied from the MQTT capture in "
        "enesbcs/Shelly_MQTT#64 (shellyem3-68C63AFAF952); total/total_returned (Wh) shape from "
        "the capture in iobroker-community-adapters/ioBroker.shelly#648 (emeter/0/total 21831.1, "
        "emeter/0/total_returned 53.0)."
    ),
    messages=(
        Message("shellies/shellyem3-68C63AFAF952/online", "true", retain=True),
        Message("shellies/shellyem3-68C63AFAF952/relay/0", "off"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/0/power", "120.11"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/0/pf", "0.71"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/0/current", "0.71"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/0/voltage", "239.03"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/0/total", "21831.1"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/0/total_returned", "53.0"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/1/power", "116.23"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/1/pf", "0.71"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/1/current", "0.69"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/1/voltage", "237.51"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/1/total", "15302.4"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/1/total_returned", "0.0"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/2/power", "76.46"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/2/pf", "0.54"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/2/current", "0.59"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/2/voltage", "240.50"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/2/total", "9876.5"),
        Message("shellies/shellyem3-68C63AFAF952/emeter/2/total_returned", "0.0"),
    ),
    uri="shelly:shellyem3-68C63AFAF952",
    readings={
        "state": (0, None),
        "power": (120.11, "W"),
        "power_factor": (0.71, None),
        "current": (0.71, "A"),
        "voltage": (239.03, "V"),
        "energy": (21831.1 / 1000, "kWh"),
        "energy_returned": (53.0 / 1000, "kWh"),
        "power_1": (116.23, "W"),
        "power_factor_1": (0.71, None),
        "current_1": (0.69, "A"),
        "voltage_1": (237.51, "V"),
        "energy_1": (15302.4 / 1000, "kWh"),
        "energy_returned_1": (0.0, "kWh"),
        "power_2": (76.46, "W"),
        "power_factor_2": (0.54, None),
        "current_2": (0.59, "A"),
        "voltage_2": (240.5, "V"),
        "energy_2": (9876.5 / 1000, "kWh"),
        "energy_returned_2": (0.0, "kWh"),
    },
    channels={"state": False},
)

# Gen1 sensor topics from device-conventions.md §2.1 / the brief (sensor/temperature,
# sensor/humidity, sensor/battery); values and id from the /status capture
# Luligu/matterbridge-shelly src/mock/shellyht-703523.json (tmp 21.75 C, hum 62.5,
# bat 100, act_reasons ["sensor"]).
SHELLY_HT_GEN1 = CorpusDevice(
    label="Shelly H&T (Gen1)",
    family="shelly",
    source=(
        "Gen1 sensor topics from device-conventions.md §2.1 / the brief (sensor/temperature, "
        "sensor/humidity, sensor/battery); values and id from the /status capture "
        "Luligu/matterbridge-shelly src/mock/shellyht-703523.json (tmp 21.75 C, hum 62.5, bat "
        '100, act_reasons ["sensor"]).'
    ),
    messages=(
        Message("shellies/shellyht-703523/online", "true", retain=True),
        Message("shellies/shellyht-703523/sensor/temperature", "21.75"),
        Message("shellies/shellyht-703523/sensor/humidity", "62.5"),
        Message("shellies/shellyht-703523/sensor/battery", "100"),
        Message("shellies/shellyht-703523/sensor/act_reasons", '["sensor"]'),
    ),
    uri="shelly:shellyht-703523",
    readings={
        "temperature": (21.75, "°C"),
        "humidity": (62.5, "%"),
        "battery": (100, "%"),
    },
)

# ---- Shelly Gen2+: <id>/status/<component:n>, <id>/events/rpc, <id>/online

# status/switch:0 and status/wifi bodies copied from the Shelly.GetStatus capture
# Luligu/matterbridge-shelly src/mock/shellyplus1pm-441793D69718.json (status_ntf
# publishes the same component status, shelly-api-docs gen2 ComponentsAndServices/Mqtt);
# NotifyStatus delta shape from shelly-api-docs gen2/General/Notifications
# (switch:0 {id, output, source}) with dst <id>/events as in gist NelsonMinar/494a0f53.
SHELLY_PLUS_1PM = CorpusDevice(
    label="Shelly Plus 1PM (Gen2)",
    family="shelly",
    source=(
        "status/switch:0 and status/wifi bodies copied from the Shelly.GetStatus capture "
        "Luligu/matterbridge-shelly src/mock/shellyplus1pm-441793D69718.json (status_ntf "
        "publishes the same component status, shelly-api-docs gen2 ComponentsAndServices/Mqtt); "
        "NotifyStatus delta shape from shelly-api-docs gen2/General/Notifications (switch:0 {id, "
        "output, source}) with dst <id>/events as in gist NelsonMinar/494a0f53."
    ),
    messages=(
        Message("shellyplus1pm-441793d69718/online", "true", retain=True),
        Message(
            "shellyplus1pm-441793d69718/status/switch:0",
            (
                '{"id":0,"source":"init","output":false,"apower":0,"voltage":232.9,"current":0,'
                '"aenergy":{"total":66,"by_minute":[0,0,0],"minute_ts":1779362100},'
                '"temperature":{"tC":51,"tF":123.8}}'
            ),
        ),
        Message(
            "shellyplus1pm-441793d69718/status/wifi",
            (
                '{"sta_ip":"192.168.68.78","status":"got ip","ssid":"HomeNet",'
                '"bssid":"20:23:51:59:e7:ac","rssi":-49}'
            ),
        ),
        Message(
            "shellyplus1pm-441793d69718/events/rpc",
            (
                '{"src":"shellyplus1pm-441793d69718","dst":"shellyplus1pm-441793d69718/events",'
                '"method":"NotifyStatus","params":{"ts":1779362160.42,"switch:0":{"id":0,'
                '"output":true,"source":"button"}}}'
            ),
        ),
    ),
    uri="shelly:shellyplus1pm-441793d69718",
    readings={
        "state": (1, None),
        "power": (0, "W"),
        "voltage": (232.9, "V"),
        "current": (0, "A"),
        "energy": (66 / 1000, "kWh"),
        "device_temperature": (51, "°C"),
        "rssi": (-49, "dBm"),
    },
    channels={"state": True},
)

# status/switch:0 copied from Luligu/matterbridge-shelly
# src/mock/shellyplusplugs-E86BEAEAA000.json; the NotifyStatus delta carrying only
# aenergy (the per-minute energy update) is shaped after shelly-api-docs
# gen2/General/Notifications ("Some or all unchanged attributes ... may not be visible").
SHELLY_PLUS_PLUG_S = CorpusDevice(
    label="Shelly Plus Plug S (Gen2)",
    family="shelly",
    source=(
        "status/switch:0 copied from Luligu/matterbridge-shelly "
        "src/mock/shellyplusplugs-E86BEAEAA000.json; the NotifyStatus delta carrying only "
        "aenergy (the per-minute energy update) is shaped after shelly-api-docs "
        'gen2/General/Notifications ("Some or all unchanged attributes ... may not be visible").'
    ),
    messages=(
        Message("shellyplusplugs-e86beaeaa000/online", "true", retain=True),
        Message(
            "shellyplusplugs-e86beaeaa000/status/switch:0",
            (
                '{"id":0,"source":"init","output":true,"apower":36.7,"voltage":232.1,'
                '"current":0.307,"aenergy":{"total":499599.717,"by_minute":[618.451,618.897,'
                '619.342],"minute_ts":1779362280},"temperature":{"tC":45.5,"tF":113.9}}'
            ),
        ),
        Message(
            "shellyplusplugs-e86beaeaa000/events/rpc",
            (
                '{"src":"shellyplusplugs-e86beaeaa000","dst":"shellyplusplugs-e86beaeaa000/events'
                '","method":"NotifyStatus","params":{"ts":1779362340.01,"switch:0":{"id":0,'
                '"aenergy":{"by_minute":[619.342,618.451,618.897],"minute_ts":1779362340,'
                '"total":499600.336}}}}'
            ),
        ),
    ),
    uri="shelly:shellyplusplugs-e86beaeaa000",
    readings={
        "state": (1, None),
        "power": (36.7, "W"),
        "voltage": (232.1, "V"),
        "current": (0.307, "A"),
        "energy": (499600.336 / 1000, "kWh"),
        "device_temperature": (45.5, "°C"),
    },
    channels={"state": True},
)

# status/switch:0 and status/switch:1 copied from Luligu/matterbridge-shelly
# src/mock/shellypro4pm-34987A67D7D0.json (with freq, pf, ret_aenergy); the switch:1
# NotifyStatus deltas follow shelly-api-docs gen2/General/Notifications (its example is
# a shellypro4pm switch:0 {id, output, source} delta).
SHELLY_PRO_4PM = CorpusDevice(
    label="Shelly Pro 4PM (Gen2, switch:0 and switch:1)",
    family="shelly",
    source=(
        "status/switch:0 and status/switch:1 copied from Luligu/matterbridge-shelly "
        "src/mock/shellypro4pm-34987A67D7D0.json (with freq, pf, ret_aenergy); the switch:1 "
        "NotifyStatus deltas follow shelly-api-docs gen2/General/Notifications (its example is a "
        "shellypro4pm switch:0 {id, output, source} delta)."
    ),
    messages=(
        Message("shellypro4pm-34987a67d7d0/online", "true", retain=True),
        Message(
            "shellypro4pm-34987a67d7d0/status/switch:0",
            (
                '{"id":0,"source":"init","output":true,"apower":20.7,"voltage":232.6,"freq":50,'
                '"current":0.185,"pf":0.49,"aenergy":{"total":282212.208,"by_minute":[356.924,'
                '358.003,357.914],"minute_ts":1779361620},"ret_aenergy":{"total":0,'
                '"by_minute":[0,0,0],"minute_ts":1779361620},"temperature":{"tC":57.4,'
                '"tF":135.4}}'
            ),
        ),
        Message(
            "shellypro4pm-34987a67d7d0/status/switch:1",
            (
                '{"id":1,"source":"init","output":true,"apower":6.3,"voltage":232.5,"freq":50,'
                '"current":0.064,"pf":0.63,"aenergy":{"total":97722.261,"by_minute":[107.155,'
                '107.39,107.361],"minute_ts":1779361620},"ret_aenergy":{"total":0,"by_minute":[0,'
                '0,0],"minute_ts":1779361620},"temperature":{"tC":57.4,"tF":135.4}}'
            ),
        ),
        Message(
            "shellypro4pm-34987a67d7d0/events/rpc",
            (
                '{"src":"shellypro4pm-34987a67d7d0","dst":"shellypro4pm-34987a67d7d0/events",'
                '"method":"NotifyStatus","params":{"ts":1779361645.04,"switch:1":{"id":1,'
                '"output":false,"source":"button"}}}'
            ),
        ),
        Message(
            "shellypro4pm-34987a67d7d0/events/rpc",
            (
                '{"src":"shellypro4pm-34987a67d7d0","dst":"shellypro4pm-34987a67d7d0/events",'
                '"method":"NotifyStatus","params":{"ts":1779361646.12,"switch:1":{"id":1,'
                '"apower":0,"current":0,"pf":0}}}'
            ),
        ),
    ),
    uri="shelly:shellypro4pm-34987a67d7d0",
    readings={
        "state": (1, None),
        "power": (20.7, "W"),
        "voltage": (232.6, "V"),
        "frequency": (50, "Hz"),
        "current": (0.185, "A"),
        "power_factor": (0.49, None),
        "energy": (282212.208 / 1000, "kWh"),
        "device_temperature": (57.4, "°C"),
        "state_1": (0, None),
        "power_1": (0, "W"),
        "voltage_1": (232.5, "V"),
        "frequency_1": (50, "Hz"),
        "current_1": (0, "A"),
        "power_factor_1": (0, None),
        "energy_1": (97722.261 / 1000, "kWh"),
        "device_temperature_1": (57.4, "°C"),
    },
    channels={"state": True, "state_1": False},
)

# NotifyFullStatus received over MQTT, copied from gist NelsonMinar/494a0f53785c20290b39
# 5639548349fa ("Status from a Shelly Plus H&T ... (via MQTT)"); the stored excerpt
# ends at wifi.rssi, so the rssi value (-58) and the closing `ws` component are assumed.
# The temperature:0 NotifyStatus delta follows shelly-api-docs gen2/General/Notifications.
SHELLY_PLUS_HT = CorpusDevice(
    label="Shelly Plus H&T (Gen2)",
    family="shelly",
    source=(
        "NotifyFullStatus received over MQTT, copied from gist NelsonMinar/494a0f53785c20290b39 "
        '5639548349fa ("Status from a Shelly Plus H&T ... (via MQTT)"); the stored excerpt ends '
        "at wifi.rssi, so the rssi value (-58) and the closing `ws` component are assumed. The "
        "temperature:0 NotifyStatus delta follows shelly-api-docs gen2/General/Notifications."
    ),
    messages=(
        Message("shellyplusht-b8d61a8b17cc/online", "true", retain=True),
        Message(
            "shellyplusht-b8d61a8b17cc/events/rpc",
            (
                '{"src":"shellyplusht-b8d61a8b17cc","dst":"shellyplusht-b8d61a8b17cc/events",'
                '"method":"NotifyFullStatus","params":{"ts":1680962879.62,"ble":{},'
                '"cloud":{"connected":false},"devicepower:0":{"id":0,"battery":{"V":0.43,'
                '"percent":0},"external":{"present":true}},"ht_ui":{},"humidity:0":{"id":0,'
                '"rh":42.2},"mqtt":{"connected":true},"sys":{"mac":"B8D61A8B17CC",'
                '"restart_required":false,"time":null,"unixtime":null,"uptime":3,'
                '"ram_size":235300,"ram_free":164244,"fs_size":458752,"fs_free":118784,'
                '"cfg_rev":10,"kvs_rev":0,"webhook_rev":0,"available_updates":{},'
                '"wakeup_reason":{"boot":"deepsleep_wake","cause":"status_update"},'
                '"wakeup_period":600},"temperature:0":{"id":0,"tC":19.8,"tF":67.6},'
                '"wifi":{"sta_ip":"192.168.3.183","status":"got ip","ssid":"winos","rssi":-58},'
                '"ws":{"connected":false}}}'
            ),
        ),
        Message(
            "shellyplusht-b8d61a8b17cc/events/rpc",
            (
                '{"src":"shellyplusht-b8d61a8b17cc","dst":"shellyplusht-b8d61a8b17cc/events",'
                '"method":"NotifyStatus","params":{"ts":1680963479.61,"temperature:0":{"id":0,'
                '"tC":20.1,"tF":68.2}}}'
            ),
        ),
    ),
    uri="shelly:shellyplusht-b8d61a8b17cc",
    readings={
        "temperature": (20.1, "°C"),
        "humidity": (42.2, "%"),
        "battery": (0, "%"),
        "battery_voltage": (0.43, "V"),
        "external_power": (1, None),
        "rssi": (-58, "dBm"),
    },
)

# status/em:0, status/emdata:0 and status/wifi copied from the Shelly.GetStatus capture
# Luligu/matterbridge-shelly src/mock/shellypro3em-A0DD6CA0C27C.triphase.json (a load
# on phase C only); EMData totals are Wh (evcc-io/evcc#7335 citing shelly-api-docs
# gen2/ComponentsAndServices/EMData#status); the em:0 NotifyStatus delta follows
# shelly-api-docs gen2/General/Notifications.
SHELLY_PRO_3EM = CorpusDevice(
    label="Shelly Pro 3EM (Gen2, em:0 and emdata:0)",
    family="shelly",
    source=(
        "status/em:0, status/emdata:0 and status/wifi copied from the Shelly.GetStatus capture "
        "Luligu/matterbridge-shelly src/mock/shellypro3em-A0DD6CA0C27C.triphase.json (a load on "
        "phase C only); EMData totals are Wh (evcc-io/evcc#7335 citing shelly-api-docs "
        "gen2/ComponentsAndServices/EMData#status); the em:0 NotifyStatus delta follows "
        "shelly-api-docs gen2/General/Notifications."
    ),
    messages=(
        Message("shellypro3em-a0dd6ca0c27c/online", "true", retain=True),
        Message(
            "shellypro3em-a0dd6ca0c27c/status/em:0",
            (
                '{"id":0,"a_current":0.028,"a_voltage":0,"a_act_power":0,"a_aprt_power":0,'
                '"a_pf":0,"a_freq":0,"b_current":0.027,"b_voltage":0,"b_act_power":0,'
                '"b_aprt_power":0,"b_pf":0,"b_freq":0,"c_current":0.068,"c_voltage":232.7,'
                '"c_act_power":6.8,"c_aprt_power":15.9,"c_pf":0.42,"c_freq":50,"n_current":null,'
                '"total_current":0.123,"total_act_power":6.78,"total_aprt_power":15.881,'
                '"user_calibrated_phase":[]}'
            ),
        ),
        Message(
            "shellypro3em-a0dd6ca0c27c/status/emdata:0",
            (
                '{"id":0,"a_total_act_energy":0.01,"a_total_act_ret_energy":0,'
                '"b_total_act_energy":0.01,"b_total_act_ret_energy":0,'
                '"c_total_act_energy":45236.95,"c_total_act_ret_energy":0,"total_act":45236.97,'
                '"total_act_ret":0}'
            ),
        ),
        Message(
            "shellypro3em-a0dd6ca0c27c/status/wifi",
            (
                '{"sta_ip":"192.168.68.64","status":"got ip","ssid":"HomeNet",'
                '"bssid":"20:23:51:59:e7:ac","rssi":-56}'
            ),
        ),
        Message(
            "shellypro3em-a0dd6ca0c27c/events/rpc",
            (
                '{"src":"shellypro3em-a0dd6ca0c27c","dst":"shellypro3em-a0dd6ca0c27c/events",'
                '"method":"NotifyStatus","params":{"ts":1779362400.18,"em:0":{"id":0,'
                '"c_act_power":7.1,"c_current":0.071,"total_act_power":7.08,'
                '"total_current":0.126}}}'
            ),
        ),
    ),
    uri="shelly:shellypro3em-a0dd6ca0c27c",
    readings={
        "power": (7.08, "W"),
        "apparent_power": (15.881, "VA"),
        "current": (0.126, "A"),
        "power_a": (0, "W"),
        "power_b": (0, "W"),
        "power_c": (7.1, "W"),
        "voltage_a": (0, "V"),
        "voltage_b": (0, "V"),
        "voltage_c": (232.7, "V"),
        "current_a": (0.028, "A"),
        "current_b": (0.027, "A"),
        "current_c": (0.071, "A"),
        "apparent_power_a": (0, "VA"),
        "apparent_power_b": (0, "VA"),
        "apparent_power_c": (15.9, "VA"),
        "power_factor_a": (0, None),
        "power_factor_b": (0, None),
        "power_factor_c": (0.42, None),
        "frequency_a": (0, "Hz"),
        "frequency_b": (0, "Hz"),
        "frequency_c": (50, "Hz"),
        "energy": (45236.97 / 1000, "kWh"),
        "energy_returned": (0, "kWh"),
        "energy_a": (0.01 / 1000, "kWh"),
        "energy_returned_a": (0, "kWh"),
        "energy_b": (0.01 / 1000, "kWh"),
        "energy_returned_b": (0, "kWh"),
        "energy_c": (45236.95 / 1000, "kWh"),
        "energy_returned_c": (0, "kWh"),
        "rssi": (-56, "dBm"),
    },
)

# status/pm1:0 copied from the Shelly.GetStatus capture Luligu/matterbridge-shelly
# src/mock/shellypmminig3-84FCE63957F4.json (S3PM-001PCEU16, fw 1.3.1).
SHELLY_PM_MINI_G3 = CorpusDevice(
    label="Shelly PM Mini Gen3 (pm1:0)",
    family="shelly",
    source=(
        "status/pm1:0 copied from the Shelly.GetStatus capture Luligu/matterbridge-shelly "
        "src/mock/shellypmminig3-84FCE63957F4.json (S3PM-001PCEU16, fw 1.3.1)."
    ),
    messages=(
        Message("shellypmminig3-84fce63957f4/online", "true", retain=True),
        Message(
            "shellypmminig3-84fce63957f4/status/pm1:0",
            (
                '{"id":0,"voltage":234.5,"current":0.043,"apower":4.4,"freq":50.1,'
                '"aenergy":{"total":73112.963,"by_minute":[0,0,213.298],"minute_ts":1779361680},'
                '"ret_aenergy":{"total":0,"by_minute":[0,0,0],"minute_ts":1779361680}}'
            ),
        ),
    ),
    uri="shelly:shellypmminig3-84fce63957f4",
    readings={
        "power": (4.4, "W"),
        "voltage": (234.5, "V"),
        "current": (0.043, "A"),
        "frequency": (50.1, "Hz"),
        "energy": (73112.963 / 1000, "kWh"),
    },
)

# ---- ESPHome: <node>/<component>/<object_id>/state (plain text), <node>/status

# entities from athom-tech/athom-configs athom-smart-plug-v2.yaml (cse7766 Current,
# Voltage, Power, Energy; template Total Energy; total_daily_energy; wifi_signal
# "WiFi Signal dB"; status binary_sensor; gpio switch "Switch"; name_add_mac_suffix)
# with an mqtt: block; topics <node>/<component>/<object_id>/state and retained
# <node>/status online, state retained by default (esphome/esphome-docs
# components/mqtt.rst); payloads are plain text (accuracy_decimals), shape only.
ESPHOME_ATHOM_PLUG = CorpusDevice(
    label="Athom Smart Plug V2 (ESPHome, MQTT)",
    family="esphome",
    source=(
        "entities from athom-tech/athom-configs athom-smart-plug-v2.yaml (cse7766 Current, "
        'Voltage, Power, Energy; template Total Energy; total_daily_energy; wifi_signal "WiFi '
        'Signal dB"; status binary_sensor; gpio switch "Switch"; name_add_mac_suffix) with an '
        "mqtt: block; topics <node>/<component>/<object_id>/state and retained <node>/status "
        "online, state retained by default (esphome/esphome-docs components/mqtt.rst); payloads "
        "are plain text (accuracy_decimals), shape only."
    ),
    messages=(
        Message("athom-smart-plug-v2-3f8a2c/status", "online", retain=True),
        Message("athom-smart-plug-v2-3f8a2c/sensor/power/state", "38.6", retain=True),
        Message("athom-smart-plug-v2-3f8a2c/sensor/voltage/state", "229.4", retain=True),
        Message("athom-smart-plug-v2-3f8a2c/sensor/current/state", "0.27", retain=True),
        Message("athom-smart-plug-v2-3f8a2c/sensor/energy/state", "0.012", retain=True),
        Message("athom-smart-plug-v2-3f8a2c/sensor/total_energy/state", "12.345", retain=True),
        Message("athom-smart-plug-v2-3f8a2c/sensor/power_factor/state", "0.62", retain=True),
        Message("athom-smart-plug-v2-3f8a2c/sensor/total_daily_energy/state", "0.482", retain=True),
        Message("athom-smart-plug-v2-3f8a2c/sensor/wifi_signal_db/state", "-61", retain=True),
        Message("athom-smart-plug-v2-3f8a2c/binary_sensor/status/state", "ON", retain=True),
        Message("athom-smart-plug-v2-3f8a2c/binary_sensor/power_button/state", "OFF", retain=True),
        Message("athom-smart-plug-v2-3f8a2c/switch/switch/state", "ON", retain=True),
    ),
    uri="esphome:athom-smart-plug-v2-3f8a2c",
    readings={
        "power": (38.6, None),
        "voltage": (229.4, None),
        "current": (0.27, None),
        "energy": (0.012, None),
        "total_energy": (12.345, None),
        "power_factor": (0.62, None),
        "total_daily_energy": (0.482, None),
        "wifi_signal_db": (-61, None),
        "status": (1, None),
        "power_button": (0, None),
        "state_switch": (1, None),
    },
    channels={"state_switch": True},
)

# esphome/esphome-docs components/sensor/dht.rst ("Living Room Temperature",
# "Living Room Humidity" -> object ids living_room_temperature/_humidity) on the node
# `livingroom` of components/mqtt.rst (availability topic livingroom/status); values
# are plain text with one decimal (accuracy_decimals), shape only.
ESPHOME_LIVINGROOM_DHT = CorpusDevice(
    label="ESPHome climate node (DHT22 temperature + humidity)",
    family="esphome",
    source=(
        'esphome/esphome-docs components/sensor/dht.rst ("Living Room Temperature", "Living Room '
        'Humidity" -> object ids living_room_temperature/_humidity) on the node `livingroom` of '
        "components/mqtt.rst (availability topic livingroom/status); values are plain text with "
        "one decimal (accuracy_decimals), shape only."
    ),
    messages=(
        Message("livingroom/status", "online", retain=True),
        Message("livingroom/sensor/living_room_temperature/state", "23.5", retain=True),
        Message("livingroom/sensor/living_room_humidity/state", "48.0", retain=True),
        Message("livingroom/sensor/living_room_temperature/state", "23.6", retain=True),
    ),
    uri="esphome:livingroom",
    readings={
        "living_room_temperature": (23.6, None),
        "living_room_humidity": (48.0, None),
    },
)

# ---- Zigbee2MQTT: zigbee2mqtt/<friendly name> (JSON), .../availability

# payloads copied from stas-demydiuk/domoticz-zigbee2mqtt-plugin#455 (zigbee2mqtt/
# Stopcontact, TS0121_plug); exposes/units from Koenkk/zigbee2mqtt.io
# docs/devices/TS011F_plug_1.md (power W, current A, voltage V, energy kWh);
# availability JSON from docs/guide/configuration/device-availability.md (Z2M 2.x).
Z2M_PLUG = CorpusDevice(
    label="TuYa TS0121 smart plug (Zigbee2MQTT)",
    family="z2m",
    source=(
        "payloads copied from stas-demydiuk/domoticz-zigbee2mqtt-plugin#455 (zigbee2mqtt/ "
        "Stopcontact, TS0121_plug); exposes/units from Koenkk/zigbee2mqtt.io "
        "docs/devices/TS011F_plug_1.md (power W, current A, voltage V, energy kWh); availability "
        "JSON from docs/guide/configuration/device-availability.md (Z2M 2.x)."
    ),
    messages=(
        Message("zigbee2mqtt/Stopcontact/availability", '{"state":"online"}', retain=True),
        Message(
            "zigbee2mqtt/Stopcontact",
            '{"current":0,"energy":1.54,"linkquality":63,"power":0,"state":"ON","voltage":239}',
        ),
        Message(
            "zigbee2mqtt/Stopcontact",
            (
                '{"current":0.07,"energy":1.54,"linkquality":63,"power":0,"state":"ON",'
                '"voltage":239}'
            ),
        ),
    ),
    uri="z2m:Stopcontact",
    readings={
        "current": (0.07, "A"),
        "energy": (1.54, "kWh"),
        "linkquality": (63, "lqi"),
        "power": (0, "W"),
        "state": (1, None),
        "voltage": (239, None),
    },
    channels={"state": True},
)

# shape from Koenkk/zigbee2mqtt.io docs/devices/MCCGQ11LM.md (battery %, contact
# true = closed, temperature, voltage in mV, linkquality) and the log in
# Koenkk/zigbee2mqtt#946 ({"contact":true,"linkquality":70,"battery":100,...});
# friendly name with '/' per docs/guide/usage/mqtt_topics_and_messages.md.
Z2M_DOOR = CorpusDevice(
    label="Aqara MCCGQ11LM door sensor (Zigbee2MQTT)",
    family="z2m",
    source=(
        "shape from Koenkk/zigbee2mqtt.io docs/devices/MCCGQ11LM.md (battery %, contact true = "
        "closed, temperature, voltage in mV, linkquality) and the log in Koenkk/zigbee2mqtt#946 "
        '({"contact":true,"linkquality":70,"battery":100,...}); friendly name with \'/\' per '
        "docs/guide/usage/mqtt_topics_and_messages.md."
    ),
    messages=(
        Message("zigbee2mqtt/hallway/front_door/availability", '{"state":"online"}', retain=True),
        Message(
            "zigbee2mqtt/hallway/front_door",
            '{"battery":100,"contact":false,"linkquality":70,"temperature":21,"voltage":3015}',
        ),
        Message(
            "zigbee2mqtt/hallway/front_door",
            '{"battery":100,"contact":true,"linkquality":72,"temperature":21,"voltage":3015}',
        ),
    ),
    uri="z2m:hallway/front_door",
    readings={
        "battery": (100, "%"),
        "contact": (1, None),
        "linkquality": (72, "lqi"),
        "temperature": (21, "°C"),
        "voltage": (3015, None),
    },
)

# first payload copied from arachnetech/homebridge-mqttthing#315 (zigbee2mqtt/
# 0x00158d00054a726a, RTCGQ11LM); the occupancy-cleared message has the same shape
# (Koenkk/zigbee2mqtt#2274); exposes from Koenkk/zigbee2mqtt.io docs/devices/
# RTCGQ11LM.md (illuminance_lux and illuminance both lx).
Z2M_MOTION = CorpusDevice(
    label="Aqara RTCGQ11LM motion sensor (Zigbee2MQTT)",
    family="z2m",
    source=(
        "first payload copied from arachnetech/homebridge-mqttthing#315 (zigbee2mqtt/ "
        "0x00158d00054a726a, RTCGQ11LM); the occupancy-cleared message has the same shape "
        "(Koenkk/zigbee2mqtt#2274); exposes from Koenkk/zigbee2mqtt.io docs/devices/ "
        "RTCGQ11LM.md (illuminance_lux and illuminance both lx)."
    ),
    messages=(
        Message("zigbee2mqtt/0x00158d00054a726a/availability", '{"state":"online"}', retain=True),
        Message(
            "zigbee2mqtt/0x00158d00054a726a",
            (
                '{"battery":100,"voltage":3055,"illuminance":7,"illuminance_lux":7,'
                '"linkquality":26,"occupancy":true}'
            ),
        ),
        Message(
            "zigbee2mqtt/0x00158d00054a726a",
            (
                '{"battery":100,"voltage":3055,"illuminance":7,"illuminance_lux":7,'
                '"linkquality":26,"occupancy":false}'
            ),
        ),
    ),
    uri="z2m:0x00158d00054a726a",
    readings={
        "battery": (100, "%"),
        "voltage": (3055, None),
        "illuminance": (7, "lx"),
        "linkquality": (26, "lqi"),
        "occupancy": (0, None),
    },
)

# payload copied from KartoffelToby/better_thermostat#623 (zigbee2mqtt/
# wohnzimmer_heizung_rechts, Eurotronic SPZB0001, Z2M 1.x with legacy `device` object);
# exposes from Koenkk/zigbee2mqtt.io docs/devices/SPZB0001.md.
Z2M_TRV_SPIRIT = CorpusDevice(
    label="Eurotronic Spirit SPZB0001 TRV (Zigbee2MQTT)",
    family="z2m",
    source=(
        "payload copied from KartoffelToby/better_thermostat#623 (zigbee2mqtt/ "
        "wohnzimmer_heizung_rechts, Eurotronic SPZB0001, Z2M 1.x with legacy `device` object); "
        "exposes from Koenkk/zigbee2mqtt.io docs/devices/SPZB0001.md."
    ),
    messages=(
        Message(
            "zigbee2mqtt/wohnzimmer_heizung_rechts/availability", '{"state":"online"}', retain=True
        ),
        Message(
            "zigbee2mqtt/wohnzimmer_heizung_rechts",
            (
                '{"battery":50,"battery_low":false,"current_heating_setpoint":21,'
                '"device":{"applicationVersion":22,"dateCode":"20191014",'
                '"friendlyName":"wohnzimmer_heizung_rechts","hardwareVersion":35,'
                '"ieeeAddr":"0x00158d000369857b","manufacturerID":4151,'
                '"manufacturerName":"Eurotronic","model":"SPZB0001","networkAddress":58842,'
                '"powerSource":"Battery","softwareBuildID":"22190930","stackVersion":5,'
                '"type":"EndDevice","zclVersion":2},"eurotronic_error_status":0,'
                '"eurotronic_host_flags":{"boost":false,"child_protection":false,'
                '"mirror_display":false,"window_open":false},"eurotronic_system_mode":1,'
                '"eurotronic_trv_mode":2,"linkquality":255,"local_temperature":23,'
                '"local_temperature_calibration":4.9,"occupied_heating_setpoint":21,'
                '"pi_heating_demand":0,"running_state":null,"system_mode":"auto","trv_mode":null,'
                '"unoccupied_heating_setpoint":16,"update":{"state":"idle"},'
                '"update_available":false,"valve_position":null}'
            ),
        ),
    ),
    uri="z2m:wohnzimmer_heizung_rechts",
    readings={
        "battery": (50, "%"),
        "battery_low": (0, None),
        "current_heating_setpoint": (21, "°C"),
        "eurotronic_error_status": (0, None),
        "eurotronic_system_mode": (1, None),
        "eurotronic_trv_mode": (2, None),
        "linkquality": (255, "lqi"),
        "local_temperature": (23, "°C"),
        "local_temperature_calibration": (4.9, None),
        "occupied_heating_setpoint": (21, "°C"),
        "pi_heating_demand": (0, "%"),
        "unoccupied_heating_setpoint": (16, None),
    },
)

# payloads copied from Koenkk/zigbee-herdsman-converters#1305 (zigbee2mqtt/
# bedroom/radiator: local_temperature, occupied_heating_setpoint, pi_heating_demand,
# battery).
Z2M_TRV_VICARE = CorpusDevice(
    label="Viessmann ViCare TRV, friendly name with '/' (Zigbee2MQTT)",
    family="z2m",
    source=(
        "payloads copied from Koenkk/zigbee-herdsman-converters#1305 (zigbee2mqtt/ "
        "bedroom/radiator: local_temperature, occupied_heating_setpoint, pi_heating_demand, "
        "battery)."
    ),
    messages=(
        Message("zigbee2mqtt/bedroom/radiator/availability", '{"state":"online"}', retain=True),
        Message(
            "zigbee2mqtt/bedroom/radiator",
            (
                '{"local_temperature":19.81,"linkquality":39,"occupied_heating_setpoint":16.5,'
                '"pi_heating_demand":0,"battery":75}'
            ),
        ),
        Message(
            "zigbee2mqtt/bedroom/radiator",
            (
                '{"local_temperature":19.82,"linkquality":39,"occupied_heating_setpoint":16.5,'
                '"pi_heating_demand":0,"battery":74}'
            ),
        ),
    ),
    uri="z2m:bedroom/radiator",
    readings={
        "local_temperature": (19.82, "°C"),
        "linkquality": (39, "lqi"),
        "occupied_heating_setpoint": (16.5, "°C"),
        "pi_heating_demand": (0, "%"),
        "battery": (74, "%"),
    },
)

# first payload from Koenkk/zigbee2mqtt.io docs/guide/usage/mqtt_topics_and_messages.md
# (LED1545G12: state ON, brightness 215, color_temp 325; sent compact); the second
# (color_mode text, linkquality, OFF) is shape only.
Z2M_BULB = CorpusDevice(
    label="IKEA TRADFRI LED1545G12 bulb (Zigbee2MQTT)",
    family="z2m",
    source=(
        "first payload from Koenkk/zigbee2mqtt.io docs/guide/usage/mqtt_topics_and_messages.md "
        "(LED1545G12: state ON, brightness 215, color_temp 325; sent compact); the second "
        "(color_mode text, linkquality, OFF) is shape only."
    ),
    messages=(
        Message("zigbee2mqtt/living_room/ceiling/availability", '{"state":"online"}', retain=True),
        Message(
            "zigbee2mqtt/living_room/ceiling", '{"state":"ON","brightness":215,"color_temp":325}'
        ),
        Message(
            "zigbee2mqtt/living_room/ceiling",
            (
                '{"brightness":180,"color_mode":"color_temp","color_temp":370,"linkquality":96,'
                '"state":"OFF"}'
            ),
        ),
    ),
    uri="z2m:living_room/ceiling",
    readings={
        "state": (0, None),
        "brightness": (180, None),
        "color_temp": (370, "mired"),
        "linkquality": (96, "lqi"),
    },
    channels={"state": False},
)

# payload copied from Koenkk/zigbee2mqtt#1209 (log: zigbee2mqtt/0x00158d00022cb428 with
# last_seen); units from Koenkk/zigbee2mqtt.io docs/devices/WSDCGQ11LM.md (voltage mV).
Z2M_XIAOMI_THP = CorpusDevice(
    label="Aqara WSDCGQ11LM temperature/humidity/pressure (Zigbee2MQTT)",
    family="z2m",
    source=(
        "payload copied from Koenkk/zigbee2mqtt#1209 (log: zigbee2mqtt/0x00158d00022cb428 with "
        "last_seen); units from Koenkk/zigbee2mqtt.io docs/devices/WSDCGQ11LM.md (voltage mV)."
    ),
    messages=(
        Message("zigbee2mqtt/0x00158d00022cb428/availability", '{"state":"online"}', retain=True),
        Message(
            "zigbee2mqtt/0x00158d00022cb428",
            (
                '{"temperature":29.1,"linkquality":55,"humidity":34.6,"pressure":987.1,'
                '"battery":100,"voltage":3035,"last_seen":"2019-03-08T19:28:17+03:00"}'
            ),
        ),
    ),
    uri="z2m:0x00158d00022cb428",
    readings={
        "temperature": (29.1, "°C"),
        "linkquality": (55, "lqi"),
        "humidity": (34.6, "%"),
        "pressure": (987.1, "hPa"),
        "battery": (100, "%"),
        "voltage": (3035, None),
    },
)

# ---- OpenMQTTGateway BLE: home/<gateway>/BTtoMQTT/<MAC>

# payload copied from 1technophile/OpenMQTTGateway docs/use/ble.md
# (home/OpenMQTTGateway/BTtoMQTT/4C33A6603C79, numbers as strings). Units: the bundled
# mappings/openmqttgateway.yaml declares none, so every unit is None.
OMG_MIFLORA_LIKE = CorpusDevice(
    label="BLE temperature/humidity sensor 4C33A6603C79 (OpenMQTTGateway)",
    family="omg",
    source=(
        "payload copied from 1technophile/OpenMQTTGateway docs/use/ble.md "
        "(home/OpenMQTTGateway/BTtoMQTT/4C33A6603C79, numbers as strings). Units: the bundled "
        "mappings/openmqttgateway.yaml declares none, so every unit is None."
    ),
    messages=(
        Message(
            "home/OpenMQTTGateway/BTtoMQTT/4C33A6603C79",
            '{"hum":"52.6","tempc":"19.2","tempf":"66.56"}',
        ),
    ),
    uri="omg:4C33A6603C79",
    readings={
        "temperature": (19.2, None),
        "humidity": (52.6, None),
    },
)

# shape from the brief ({"id":"A4:C1:38:...","tempc":21.3,"hum":45,"batt":88})
# and docs/use/ble.md (id, rssi, model fields as in its iBeacon examples); decoded
# LYWSD03MMC_ATC as in 1technophile/OpenMQTTGateway#1302. Same gateway as
# OMG_MIFLORA_LIKE; mappings/openmqttgateway.yaml declares no units.
OMG_LYWSD03MMC = CorpusDevice(
    label="Xiaomi LYWSD03MMC (ATC firmware) via OpenMQTTGateway",
    family="omg",
    source=(
        'shape from the brief ({"id":"A4:C1:38:...","tempc":21.3,"hum":45,"batt":88}) and '
        "docs/use/ble.md (id, rssi, model fields as in its iBeacon examples); decoded "
        "LYWSD03MMC_ATC as in 1technophile/OpenMQTTGateway#1302. Same gateway as "
        "OMG_MIFLORA_LIKE; mappings/openmqttgateway.yaml declares no units."
    ),
    messages=(
        Message(
            "home/OpenMQTTGateway/BTtoMQTT/A4C138F1E2D3",
            (
                '{"id":"A4:C1:38:F1:E2:D3","mac_type":0,"adv_type":0,"name":"ATC_F1E2D3",'
                '"rssi":-71,"brand":"Xiaomi","model":"LYWSD03MMC","model_id":"LYWSD03MMC_ATC",'
                '"type":"THB","tempc":21.3,"tempf":70.34,"hum":45,"batt":88,"volt":2.951}'
            ),
        ),
    ),
    uri="omg:A4C138F1E2D3",
    readings={
        "temperature": (21.3, None),
        "humidity": (45, None),
        "battery": (88, None),
        "rssi": (-71, None),
    },
)

DEVICES: tuple[CorpusDevice, ...] = (
    TASMOTA_POW_R2,
    TASMOTA_TH16_AM2301_DS18B20,
    TASMOTA_TH10_TWO_DS18B20,
    TASMOTA_SONOFF_4CH,
    TASMOTA_BME280,
    TASMOTA_ANALOG_A0,
    TASMOTA_SCD40,
    TASMOTA_SHELLY25,
    TASMOTA_AM2301_FAHRENHEIT,
    SHELLY_1PM,
    SHELLY_PLUG_S,
    SHELLY_25_GEN1,
    SHELLY_EM_GEN1,
    SHELLY_3EM_GEN1,
    SHELLY_HT_GEN1,
    SHELLY_PLUS_1PM,
    SHELLY_PLUS_PLUG_S,
    SHELLY_PRO_4PM,
    SHELLY_PLUS_HT,
    SHELLY_PRO_3EM,
    SHELLY_PM_MINI_G3,
    ESPHOME_ATHOM_PLUG,
    ESPHOME_LIVINGROOM_DHT,
    Z2M_PLUG,
    Z2M_DOOR,
    Z2M_MOTION,
    Z2M_TRV_SPIRIT,
    Z2M_TRV_VICARE,
    Z2M_BULB,
    Z2M_XIAOMI_THP,
    OMG_MIFLORA_LIKE,
    OMG_LYWSD03MMC,
)
