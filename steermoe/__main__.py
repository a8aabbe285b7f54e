from steermoe.cli import main

main()
