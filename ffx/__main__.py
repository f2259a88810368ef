from ffx.cli import main

main()
