from recblr.cli import main

main()
