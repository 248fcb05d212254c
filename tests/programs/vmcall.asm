; vmcall: one hypercall with an unknown call code; prints the status the hypervisor returned
;
; Real mode. VMCALL exits to the VMM under trap, bt and vtx; the monolithic hypervisor offers no
; hypercalls and answers HV_STATUS_INVALID_HYPERCALL_CODE (2) in AX, printed as a digit.
bits 16
org 0x7c00
    mov eax, 0x5c
    xor edx, edx
    vmcall
    add al, '0'
    out 0xe9, al
    mov al, 10
    out 0xe9, al
    mov al, 0
    out 0xf4, al
