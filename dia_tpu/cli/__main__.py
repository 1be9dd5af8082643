from dia_tpu.cli import main

main()
