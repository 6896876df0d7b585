from benchmarks.gpucheck.cli import main

raise SystemExit(main())
