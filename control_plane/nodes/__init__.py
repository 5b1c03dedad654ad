"""The Nodes API and the control plane's end of AgentControl.Connect (one stream per node)."""
