#!/bin/sh
# run-fuzz.sh SECONDS SRCDIR TARGET...: run each libFuzzer target (built
# with --enable-fuzzing, in tests/fuzz/ of the current build directory)
# for SECONDS seconds, seeded with its checked-in corpus and dictionary.
# New inputs go to fuzz-work/NAME (never into the checked-in corpus),
# crashes to fuzz-work/NAME-crash-*. Prints per target the executions and
# any crash; exits 1 if any target crashed.
secs=$1
srcdir=$2
shift 2
failed=0
mkdir -p fuzz-work
for t in "$@"; do
	bin=tests/fuzz/fuzz_$t
	if [ ! -x "$bin" ]; then
		echo "fuzz_$t: not built (./configure CC=clang --enable-fuzzing)"
		failed=1
		continue
	fi
	mkdir -p "fuzz-work/$t"
	dict=
	[ -f "$srcdir/tests/fuzz/$t.dict" ] && dict="-dict=$srcdir/tests/fuzz/$t.dict"
	"$bin" -max_total_time="$secs" -timeout=25 -print_final_stats=1 \
		-artifact_prefix="fuzz-work/$t-" $dict \
		"fuzz-work/$t" "$srcdir/tests/fuzz/corpus/$t" \
		>"fuzz-work/$t.log" 2>&1
	rc=$?
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "fuzz-work/$t.log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "fuzz-work/$t.log" | tail -1)
	crashes=$(ls fuzz-work/"$t"-crash-* fuzz-work/"$t"-leak-* \
		fuzz-work/"$t"-timeout-* fuzz-work/"$t"-oom-* 2>/dev/null)
	if [ "$rc" -ne 0 ] || [ -n "$crashes" ]; then
		echo "fuzz_$t: ${execs:-?} executions in ${secs} s: FAILED (exit $rc); see fuzz-work/$t.log"
		for c in $crashes; do
			echo "  reproduce: $bin $c"
		done
		grep -m1 -E 'invariant broken|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error' \
			"fuzz-work/$t.log" | sed 's/^/  /'
		failed=1
	else
		echo "fuzz_$t: ${execs:-?} executions in ${secs} s (${rate:-?}/s), no crash"
	fi
done
exit $failed
