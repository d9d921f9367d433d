//go:build !purego

#include "textflag.h"

// func foldWindowAVX2(x []float32, hi, lo []float64, scale float64, e0 uint32) int
//
// Per group of 8 values: the window test on the bits (b<<1 − e0<<24 below
// R<<24, or b<<1 == 0 for a zero), then, per half, t = float64(x) × scale,
// h = (t + M) − M, hi += h, lo += t − h with M = splitMagic. See
// Accumulator for why each of these operations is exact.
TEXT ·foldWindowAVX2(SB), NOSPLIT, $0-96
	MOVQ x_base+0(FP), SI
	MOVQ x_len+8(FP), DX
	MOVQ hi_base+24(FP), DI
	MOVQ lo_base+48(FP), R8
	VBROADCASTSD scale+72(FP), Y15
	MOVL e0+80(FP), AX
	SHLL $24, AX
	VMOVD AX, X14
	VPBROADCASTD X14, Y14            // e0<<24
	MOVL $0x20000000, AX
	VMOVD AX, X13
	VPBROADCASTD X13, Y13            // R<<24 = 32<<24
	VPXOR Y12, Y12, Y12              // 0
	MOVQ $0x4638000000000000, AX
	VMOVQ AX, X11
	VPBROADCASTQ X11, Y11            // splitMagic = 1.5 × 2^100
	XORQ CX, CX

loop:
	LEAQ 8(CX), AX
	CMPQ AX, DX
	JGT  done
	VMOVDQU (SI)(CX*4), Y0
	VPADDD Y0, Y0, Y1                // b<<1: the sign dropped
	VPSUBD Y14, Y1, Y2               // b<<1 − e0<<24
	VPMINUD Y13, Y2, Y3
	VPCMPEQD Y13, Y3, Y3             // outside the window
	VPCMPEQD Y12, Y1, Y4             // zero
	VPANDN Y3, Y4, Y3                // outside and not zero
	VPTEST Y3, Y3
	JNZ  done
	VCVTPS2PD X0, Y5
	VEXTRACTI128 $1, Y0, X6
	VCVTPS2PD X6, Y6
	VMULPD Y15, Y5, Y5               // t
	VMULPD Y15, Y6, Y6
	VADDPD Y11, Y5, Y7
	VADDPD Y11, Y6, Y8
	VSUBPD Y11, Y7, Y7               // h
	VSUBPD Y11, Y8, Y8
	VSUBPD Y7, Y5, Y5                // t − h
	VSUBPD Y8, Y6, Y6
	VADDPD (DI)(CX*8), Y7, Y7
	VADDPD 32(DI)(CX*8), Y8, Y8
	VMOVUPD Y7, (DI)(CX*8)
	VMOVUPD Y8, 32(DI)(CX*8)
	VADDPD (R8)(CX*8), Y5, Y5
	VADDPD 32(R8)(CX*8), Y6, Y6
	VMOVUPD Y5, (R8)(CX*8)
	VMOVUPD Y6, 32(R8)(CX*8)
	MOVQ AX, CX
	JMP  loop

done:
	VZEROUPPER
	MOVQ CX, ret+88(FP)
	RET

// func maxAbsAVX2(xs []float32) uint32
TEXT ·maxAbsAVX2(SB), NOSPLIT, $0-28
	MOVQ xs_base+0(FP), SI
	MOVQ xs_len+8(FP), DX
	MOVL $0x7fffffff, AX
	VMOVD AX, X15
	VPBROADCASTD X15, Y15
	VPXOR Y0, Y0, Y0
	VPXOR Y1, Y1, Y1
	XORQ CX, CX

maxloop:
	CMPQ CX, DX
	JGE  reduce
	VPAND (SI)(CX*4), Y15, Y2
	VPAND 32(SI)(CX*4), Y15, Y3
	VPMAXUD Y2, Y0, Y0
	VPMAXUD Y3, Y1, Y1
	ADDQ $16, CX
	JMP  maxloop

reduce:
	VPMAXUD Y1, Y0, Y0
	VEXTRACTI128 $1, Y0, X1
	VPMAXUD X1, X0, X0
	VPSHUFD $0x4e, X0, X1
	VPMAXUD X1, X0, X0
	VPSHUFD $0xb1, X0, X1
	VPMAXUD X1, X0, X0
	VZEROUPPER
	VMOVD X0, AX
	MOVL AX, ret+24(FP)
	RET
