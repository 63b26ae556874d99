package sidecar

import (
	"fmt"
	"strings"
	"testing"
)

func TestDecodeScanner(t *testing.T) {
	tests := []struct {
		name, line string
		wantOp     Op
		wantErr    string // substring of the error message; "" = no error
	}{
		{"nested values skipped", `{"x":[{"a":"}],{"},[1,[2]]],"id":1,"y":{"z":"\"}"},"op":"ping"}`, OpPing, ""},
		{"scalars of every kind", `{"a":true,"b":null,"c":-1.5e3,"id":"i","d":false,"op":"ping","e":0}`, OpPing, ""},
		{"spaces everywhere", " {\t\"id\" : 1 ,\r\n \"op\"\t:\t\"health\" } ", OpHealth, ""},
		{"escaped key", `{"id":1,"\u006fp":"ping"}`, OpPing, ""},
		{"key case matters", `{"id":1,"OP":"ping","upstream":"u"}`, OpCall, ""},
		{"duplicate key", `{"id":1,"op":"ping","op":"health"}`, "", "duplicate key"},
		{"duplicate key after escape", `{"id":1,"op":"ping","\u006fp":"health"}`, "", "duplicate key"},
		{"duplicate header", `{"id":1,"upstream":"u","headers":{"A":"1","A":"2"}}`, "", "duplicate key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Decode([]byte(tt.line))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Message, tt.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
				}
				if err.Code != CodeBadRequest {
					t.Errorf("code: got %s, want bad_request", err.Code)
				}
				return
			}
			if err != nil {
				t.Fatalf("got %v, want no error", err)
			}
			if r.Op != tt.wantOp {
				t.Errorf("op: got %q, want %q", r.Op, tt.wantOp)
			}
		})
	}
}

func TestDecodeManyKeysIsLinear(t *testing.T) {
	// 60,000 distinct keys: a quadratic duplicate check would take minutes.
	var b strings.Builder
	b.WriteString(`{"id":1,"upstream":"u","headers":{`)
	for i := 0; i < 60000; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"X-H%d":"v"`, i)
	}
	b.WriteString(`}}`)
	r, err := Decode([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Headers) != 60000 {
		t.Errorf("headers: got %d, want 60000", len(r.Headers))
	}
	dup := strings.Replace(b.String(), `"X-H59999"`, `"X-H17"`, 1)
	if _, err := Decode([]byte(dup)); err == nil || !strings.Contains(err.Message, `"X-H17"`) {
		t.Errorf("duplicate past the set threshold: got %v, want duplicate key \"X-H17\"", err)
	}
}

func TestStringMember(t *testing.T) {
	tests := []struct {
		obj, want string
		ok        bool
	}{
		{`{"model":"phi3"}`, "phi3", true},
		{`{"a":{"model":"inner"},"model":"outer"}`, "outer", true},
		{`{"model":7}`, "", false},
		{`{"m\u006fdel":"esc"}`, "esc", true},
		{`{"models":"x"}`, "", false},
		{`{}`, "", false},
	}
	for _, tt := range tests {
		got, ok := stringMember([]byte(tt.obj), "model")
		if got != tt.want || ok != tt.ok {
			t.Errorf("stringMember(%s): got %q %v, want %q %v", tt.obj, got, ok, tt.want, tt.ok)
		}
	}
}

func TestCompactJSON(t *testing.T) {
	for in, want := range map[string]string{
		`{"a":"x y"}`:             `{"a":"x y"}`,
		"{ \"a\" :\n[1, 2] }":     `{"a":[1,2]}`,
		`"  spaced  "`:            `"  spaced  "`,
		`{"q":"\" ","r":[ true]}`: `{"q":"\" ","r":[true]}`,
	} {
		got, err := compactJSON([]byte(in))
		if err != nil || string(got) != want {
			t.Errorf("compactJSON(%q): got %q %v, want %q", in, got, err, want)
		}
	}
}
