// Package deploytest checks hubwarden's Zero to JupyterHub values files the
// way Helm and KubeSpawner will read them: merged over the chart's defaults
// and validated against the chart's values schema (z2jh 4.4.0), every string
// of the container specs expanded with Python str.format semantics, every
// HUBWARDEN_* variable run through hubwarden's own configuration loader, and
// the probes compared with the address and paths hubwarden serves.
//
// It also renders the pods the real hub makes (render.go): the chart's own
// hub configuration run by KubeSpawner 7.0.0 in the hub environment of
// scripts/python-env.sh, the pods decoded strictly into k8s.io/api/core/v1
// and validated with Kubernetes' own pod validation.
package deploytest

import (
	"fmt"
	"strings"
)

// Placeholders are the fields KubeSpawner 7 passes to str.format when it
// expands init_containers, extra_containers, volumes and volume_mounts
// (kubespawner docs/source/templates.md), with sample values. The names are
// what matters; the values only make expansions readable in failures.
var Placeholders = map[string]string{
	"userid":               "7",
	"username":             "alice-example-org---3a1f7c2d",
	"unescaped_username":   "Alice@example.org",
	"escaped_username":     "-41lice-40example-2eorg",
	"safe_username":        "alice-example-org---3a1f7c2d",
	"servername":           "gpu",
	"unescaped_servername": "gpu",
	"escaped_servername":   "gpu",
	"safe_servername":      "gpu",
	"user_server":          "alice-example-org--gpu---5b2e9a10",
	"escaped_user_server":  "-41lice-40example-2eorg--gpu",
	"safe_user_server":     "alice-example-org--gpu---5b2e9a10",
	"pod_name":             "jupyter-alice-example-org--gpu---5b2e9a10",
	"pvc_name":             "claim-alice-example-org---3a1f7c2d",
	"namespace":            "jhub",
	"hubnamespace":         "jhub",
}

// FormatError is a str.format failure: what Python would raise, at which
// byte of the template.
type FormatError struct {
	Template string
	Offset   int
	Reason   string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("str.format of %q fails at byte %d: %s", e.Template, e.Offset, e.Reason)
}

// PyFormat expands template as Python's str.format(**ns) does, restricted to
// what KubeSpawner templates may use: "{{" and "}}" are literal braces and
// "{name}" is replaced by ns[name]. Everything Python would reject (a single
// "}", an unclosed "{", an unknown name) is an error; so are conversions,
// format specs, attribute and index access and positional fields, which
// Python would accept but no hubwarden value needs.
func PyFormat(template string, ns map[string]string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(template); i++ {
		c := template[i]
		switch c {
		case '}':
			if i+1 < len(template) && template[i+1] == '}' {
				b.WriteByte('}')
				i++
				continue
			}
			return "", &FormatError{template, i, "single '}' encountered in format string"}
		case '{':
			if i+1 < len(template) && template[i+1] == '{' {
				b.WriteByte('{')
				i++
				continue
			}
			end := strings.IndexAny(template[i+1:], "{}")
			if end < 0 || template[i+1+end] != '}' {
				return "", &FormatError{template, i, "unclosed or nested '{' in format string"}
			}
			field := template[i+1 : i+1+end]
			name := field
			if j := strings.IndexAny(field, "!:.["); j >= 0 {
				name = field[:j]
			}
			if name == "" {
				return "", &FormatError{template, i, fmt.Sprintf("field %q: positional fields are not allowed (IndexError)", field)}
			}
			v, ok := ns[name]
			if !ok {
				return "", &FormatError{template, i, fmt.Sprintf("KeyError: %q is not a KubeSpawner placeholder", name)}
			}
			if name != field {
				return "", &FormatError{template, i, fmt.Sprintf("field %q: only plain placeholder names are allowed", field)}
			}
			b.WriteString(v)
			i += end + 1
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), nil
}
