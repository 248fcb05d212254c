; runoff: real-mode code that runs off its last instruction into zeroed RAM
bits 16
org 0x7c00
    cli
    nop
