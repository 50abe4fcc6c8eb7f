from tiwbench.cli import main

main()
