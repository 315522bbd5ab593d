// Package sdk is everything an author of an out-of-process realipd IP policy
// imports. A plugin is a program whose main function calls Serve with a value
// implementing Policy:
//
//	type blockAll struct{}
//
//	func (blockAll) Decide(ctx context.Context, req *sdk.Request) (sdk.Decision, error) {
//		return sdk.Decision{Deny: true, Body: "no"}, nil
//	}
//
//	func main() { sdk.Serve(blockAll{}) }
//
// realipd starts the program with hashicorp/go-plugin (gRPC, automatic mutual
// TLS, a fixed handshake), calls Configure once per process start when the
// policy implements Configurer, asks Inputs when it implements InputDeclarer,
// and then calls Decide concurrently for requests. Log with Logger: its
// output reaches realipd's log at the same level.
package sdk
