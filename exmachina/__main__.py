from exmachina.cli import main

main()
