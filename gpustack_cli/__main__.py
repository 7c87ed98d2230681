from gpustack_cli.cli.main import main

main()
