#!/usr/bin/with-contenv bashio
# shellcheck shell=bash
# Start of the add-on: options become settings (environment variables), the Mosquitto
# add-on fills in the broker when mqtt_host is empty, and the first start writes
# /config/config.yaml and /config/mappings with `sepl-adapter init`. UNTESTED.
set -euo pipefail

OPTIONS=/data/options.json
CONFIG_DIR=/config

# Every non-empty option as KEY=value: mqtt_host -> MQTT_HOST (see config.yaml).
while IFS= read -r line; do
    export "${line?}"
done < <(jq -r 'to_entries[]
    | select(.value != null and .value != "")
    | "\(.key | ascii_upcase)=\(.value | tostring)"' "${OPTIONS}")

if [[ -z "${MQTT_HOST:-}" ]] && bashio::services.available "mqtt"; then
    MQTT_HOST="$(bashio::services mqtt "host")"
    MQTT_PORT="$(bashio::services mqtt "port")"
    MQTT_USERNAME="$(bashio::services mqtt "username")"
    MQTT_PASSWORD="$(bashio::services mqtt "password")"
    export MQTT_HOST MQTT_PORT MQTT_USERNAME MQTT_PASSWORD
    bashio::log.info "Using the MQTT broker of the Supervisor at ${MQTT_HOST}:${MQTT_PORT}"
fi

# /data survives restarts and updates of the add-on, and is in its backups.
export ADAPTER_STATE_DIR=/data/state

if [[ ! -e "${CONFIG_DIR}/config.yaml" ]]; then
    sepl-adapter init "${CONFIG_DIR}"
fi

exec sepl-adapter run --config "${CONFIG_DIR}/config.yaml"
