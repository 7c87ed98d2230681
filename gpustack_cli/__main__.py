from gpustack_cli.cli import main

main()
