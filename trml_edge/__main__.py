from trml_edge.cli import main

main()
