package main

import "github.com/hubwarden/hubwarden/tcshape"

// defaultRouteInterface names the interface of the default route (read-only).
func defaultRouteInterface(k *tcshape.TC) (string, error) { return k.DefaultRouteInterface() }
