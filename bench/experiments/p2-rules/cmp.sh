#!/bin/bash
# cmp.sh VARIANT.nft [ROUNDS]: iperf3 over the lab with no rules and with VARIANT, interleaved
# (order alternating), and the ratio of the medians.
cd "$(dirname "$0")"
R=${2:-4}; a=(); b=()
for k in $(seq 1 $R); do
  if [ $((k%2)) = 1 ]; then ./lab.sh rules; a+=($(./lab.sh run)); ./lab.sh rules "$1"; b+=($(./lab.sh run));
  else ./lab.sh rules "$1"; b+=($(./lab.sh run)); ./lab.sh rules; a+=($(./lab.sh run)); fi
done
python3 -c "
import statistics as s,sys
a=[float(x) for x in '${a[*]}'.split()]; b=[float(x) for x in '${b[*]}'.split()]
print('%-28s none %.2f  variant %.2f  ratio %.3f' % ('$1', s.median(a), s.median(b), s.median(b)/s.median(a)))"
