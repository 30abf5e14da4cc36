from bench.perf import main

main()
