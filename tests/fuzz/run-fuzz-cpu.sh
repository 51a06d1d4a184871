#!/bin/sh
# run-fuzz-cpu.sh CPU_SECONDS SRCDIR TARGET...: run every libFuzzer target
# at once, at the lowest scheduling priority, each until it has used
# CPU_SECONDS of CPU time (user + system), so that a campaign on a shared
# machine still gives every target its full budget. A watchdog sends each
# fuzzer SIGINT when its budget is spent; libFuzzer then prints its final
# statistics. New inputs go to fuzz-work/NAME, crashes to
# fuzz-work/NAME-crash-*. Prints per target the CPU time, executions and
# any crash; exits 1 if any target crashed.
budget=$1
srcdir=$2
shift 2
tick=$(getconf CLK_TCK)
mkdir -p fuzz-work
pids=
for t in "$@"; do
	bin=tests/fuzz/fuzz_$t
	if [ ! -x "$bin" ]; then
		echo "fuzz_$t: not built (./configure CC=clang --enable-fuzzing)"
		exit 1
	fi
	mkdir -p "fuzz-work/$t"
	dict=
	[ -f "$srcdir/tests/fuzz/$t.dict" ] && dict="-dict=$srcdir/tests/fuzz/$t.dict"
	nice -n 19 "$bin" -timeout=25 -print_final_stats=1 \
		-artifact_prefix="fuzz-work/$t-" $dict \
		"fuzz-work/$t" "$srcdir/tests/fuzz/corpus/$t" \
		>"fuzz-work/$t.log" 2>&1 &
	echo $! >"fuzz-work/$t.pid"
	pids="$pids $!"
done

# cpu PID: CPU seconds used so far by the process (fields 14 and 15).
cpu() {
	awk -v t="$tick" '{ sub(/^.*\) /, ""); print int(($12 + $13) / t) }' \
	    "/proc/$1/stat" 2>/dev/null
}

running=1
while [ $running -eq 1 ]; do
	running=0
	for t in "$@"; do
		pid=$(cat "fuzz-work/$t.pid")
		kill -0 "$pid" 2>/dev/null || continue
		running=1
		used=$(cpu "$pid")
		echo "${used:-0}" >"fuzz-work/$t.cpu"
		[ "${used:-0}" -ge "$budget" ] && kill -INT "$pid"
	done
	[ $running -eq 1 ] && sleep 5
done

failed=0
for t in "$@"; do
	pid=$(cat "fuzz-work/$t.pid")
	wait "$pid" 2>/dev/null
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "fuzz-work/$t.log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "fuzz-work/$t.log" | tail -1)
	used=$(cat "fuzz-work/$t.cpu")
	crashes=$(ls fuzz-work/"$t"-crash-* fuzz-work/"$t"-leak-* \
		fuzz-work/"$t"-timeout-* fuzz-work/"$t"-oom-* 2>/dev/null)
	if [ -n "$crashes" ] || ! grep -q '^stat::number_of_executed_units' "fuzz-work/$t.log"; then
		echo "fuzz_$t: ${execs:-?} executions in ${used} CPU s: FAILED; see fuzz-work/$t.log"
		for c in $crashes; do
			echo "  reproduce: tests/fuzz/fuzz_$t $c"
		done
		grep -m1 -E 'invariant broken|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error' \
			"fuzz-work/$t.log" | sed 's/^/  /'
		failed=1
	else
		echo "fuzz_$t: ${execs:-?} executions in ${used} CPU s (${rate:-?}/s of wall time), no crash"
	fi
done
exit $failed
