# Sourced by the benchmark scripts: `peak_rss PID` samples /proc/PID/status every 0.5 s until the
# process exits and leaves its peak anonymous and file-backed resident memory, in MiB, in $anon and
# $file (the report's peak_rss_mib, the kernel's VmHWM, counts both).
peak_rss() {
  local pid=$1 status a f
  anon=0 file=0
  while status=$(cat "/proc/$pid/status" 2>/dev/null); do
    a=$(awk '/^RssAnon:/ {print int($2 / 1024)}' <<<"$status")
    f=$(awk '/^RssFile:/ {print int($2 / 1024)}' <<<"$status")
    [ -n "$a" ] && [ "$a" -gt "$anon" ] && anon=$a
    [ -n "$f" ] && [ "$f" -gt "$file" ] && file=$f
    [ -z "$a" ] && break # exited, not yet reaped
    sleep 0.5
  done
}
