//go:build !linux

package main

import "syscall"

// childAttr has nothing to add where there is no parent-death signal;
// armbench refuses to run there anyway (it reads /proc).
func childAttr() *syscall.SysProcAttr { return nil }
