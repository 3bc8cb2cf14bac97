# Sourced by test.sh and bench.sh: installs Node.js and npm from Debian's packages if missing.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "Node.js not found; installing the Debian packages nodejs and npm" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
    else
        sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y nodejs npm
    fi || {
        echo "error: installing Node.js with apt-get failed; install nodejs and npm by hand" >&2
        exit 1
    }
fi
