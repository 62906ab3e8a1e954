from selftune.cli import main

main()
